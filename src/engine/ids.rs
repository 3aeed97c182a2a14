//! Decision and reservation ids: a counter enciphered with AES-128 under
//! the engine's id key, so an id is 128 bits no client can predict from
//! the ids it has seen (neighbours share no visible part), yet the same
//! counter gives the same id on every replay. Deciphering tells whether an
//! id was ever made here, and which one it was.

use aes::{
    Aes128,
    cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray},
};

/// What an id names: the two kinds never share an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A decision.
    Decision,
    /// A reservation.
    Reservation,
}

/// The block enciphered: a tag naming careroute and the kind, then the
/// counter. A guessed id deciphers to the tag with odds of 2^-96.
fn block(kind: IdKind, seq: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..11].copy_from_slice(b"careroute-i");
    b[11] = match kind {
        IdKind::Decision => b'd',
        IdKind::Reservation => b'r',
    };
    b[12..].copy_from_slice(&seq.to_be_bytes());
    b
}

/// The id of the `seq`th id of `kind` under `key`.
pub fn encipher(key: &[u8; 16], kind: IdKind, seq: u32) -> u128 {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut b = GenericArray::from(block(kind, seq));
    cipher.encrypt_block(&mut b);
    u128::from_be_bytes(b.into())
}

/// The counter of an id of `kind` made under `key`, or none if it was not.
pub fn decipher(key: &[u8; 16], kind: IdKind, id: u128) -> Option<u32> {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut b = GenericArray::from(id.to_be_bytes());
    cipher.decrypt_block(&mut b);
    let b: [u8; 16] = b.into();
    let seq = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    (b == block(kind, seq)).then_some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_kinds_do_not_mix() {
        let key = [42u8; 16];
        for seq in [0, 1, 2, 1000, u32::MAX] {
            let id = encipher(&key, IdKind::Reservation, seq);
            assert_eq!(decipher(&key, IdKind::Reservation, id), Some(seq));
            assert_eq!(decipher(&key, IdKind::Decision, id), None);
            assert_eq!(decipher(&[43u8; 16], IdKind::Reservation, id), None);
        }
        assert_eq!(decipher(&key, IdKind::Reservation, 12345), None);
    }

    /// Neighbouring ids share no predictable part: over a run of ids from
    /// consecutive counters, no hex digit keeps its value, and neighbours
    /// differ in about half their 128 bits.
    #[test]
    fn neighbouring_ids_share_no_predictable_part() {
        let key = [9u8; 16];
        let ids: Vec<u128> = (0..2000)
            .map(|seq| encipher(&key, IdKind::Reservation, seq))
            .collect();
        for digit in 0..32 {
            let first = (ids[0] >> (digit * 4)) & 0xf;
            assert!(
                ids.iter().any(|id| (id >> (digit * 4)) & 0xf != first),
                "hex digit {digit} is the same in every id"
            );
        }
        let flips: Vec<u32> = ids.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).collect();
        let mean = f64::from(flips.iter().sum::<u32>()) / flips.len() as f64;
        assert!(
            (60.0..68.0).contains(&mean),
            "neighbours differ in {mean} bits on average"
        );
        assert!(
            flips.iter().all(|&f| f >= 30),
            "two neighbours nearly equal"
        );
    }
}
