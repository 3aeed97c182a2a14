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

/// The key ids are enciphered under: drawn for a new log and kept with
/// it. Its value never appears in debug output.
#[derive(Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdKey(pub [u8; 16]);

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(..)")
    }
}

/// The key's cipher, set up once per engine.
#[derive(Clone)]
pub struct IdCipher(Aes128);

impl std::fmt::Debug for IdCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdCipher(..)")
    }
}

impl Default for IdCipher {
    /// The all-zero key's: replaced as soon as an engine is built or
    /// decoded.
    fn default() -> IdCipher {
        IdCipher::new(&IdKey::default())
    }
}

/// Counters run below this (2^48): the block's last six bytes.
pub const MAX_COUNTER: u64 = 1 << 48;

/// The block enciphered: a tag naming careroute and the kind, the epoch
/// (drawn by each start, so a counter a lost tail of the log had reached
/// and a start gives again makes another id), then the counter. A guessed
/// id deciphers to the tag with odds of 2^-48.
fn block(kind: IdKind, epoch: u32, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..5].copy_from_slice(b"crrte");
    b[5] = match kind {
        IdKind::Decision => b'd',
        IdKind::Reservation => b'r',
    };
    b[6..10].copy_from_slice(&epoch.to_be_bytes());
    b[10..].copy_from_slice(&seq.to_be_bytes()[2..]);
    b
}

impl IdCipher {
    /// The cipher of `key`.
    pub fn new(key: &IdKey) -> IdCipher {
        IdCipher(Aes128::new(GenericArray::from_slice(&key.0)))
    }

    /// The id of the `seq`th id of `kind` in `epoch` (`seq` below
    /// [`MAX_COUNTER`]).
    pub fn encipher(&self, kind: IdKind, epoch: u32, seq: u64) -> u128 {
        debug_assert!(seq < MAX_COUNTER);
        let mut b = GenericArray::from(block(kind, epoch, seq));
        self.0.encrypt_block(&mut b);
        u128::from_be_bytes(b.into())
    }

    /// The epoch and counter of an id of `kind` made under this key, or
    /// none if it was not.
    pub fn decipher(&self, kind: IdKind, id: u128) -> Option<(u32, u64)> {
        let mut b = GenericArray::from(id.to_be_bytes());
        self.0.decrypt_block(&mut b);
        let b: [u8; 16] = b.into();
        let epoch = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&b[10..]);
        let seq = u64::from_be_bytes(seq);
        (b == block(kind, epoch, seq)).then_some((epoch, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_kinds_do_not_mix() {
        let ids = IdCipher::new(&IdKey([42; 16]));
        let other = IdCipher::new(&IdKey([43; 16]));
        for seq in [0, 1, 2, 1000, u64::from(u32::MAX) + 1, MAX_COUNTER - 1] {
            for epoch in [0, 1, u32::MAX] {
                let id = ids.encipher(IdKind::Reservation, epoch, seq);
                assert_eq!(ids.decipher(IdKind::Reservation, id), Some((epoch, seq)));
                assert_eq!(ids.decipher(IdKind::Decision, id), None);
                assert_eq!(other.decipher(IdKind::Reservation, id), None);
            }
            assert_ne!(
                ids.encipher(IdKind::Decision, 0, seq),
                ids.encipher(IdKind::Decision, 1, seq),
                "another epoch, another id"
            );
        }
        assert_eq!(ids.decipher(IdKind::Reservation, 12345), None);
        assert_eq!(format!("{:?}", IdKey([42; 16])), "IdKey(..)");
    }

    /// Neighbouring ids share no predictable part: over a run of ids from
    /// consecutive counters, no hex digit keeps its value, and neighbours
    /// differ in about half their 128 bits.
    #[test]
    fn neighbouring_ids_share_no_predictable_part() {
        let cipher = IdCipher::new(&IdKey([9; 16]));
        let ids: Vec<u128> = (0..2000)
            .map(|seq| cipher.encipher(IdKind::Reservation, 0, seq))
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
