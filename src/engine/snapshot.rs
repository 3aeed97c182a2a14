//! The engine's whole state as one value: what a snapshot keeps, so a
//! restart loads it and replays only the commands after it. The encoding
//! is `postcard`; [`STATE_FORMAT`] names the layout, and a snapshot of
//! another layout is refused rather than misread. Like the rest of the
//! engine it knows no storage, runtime or wire: bytes in, bytes out.
//! [`SnapshotError`] is the engine's second error type; it never reaches a
//! client (the journal refuses the snapshot and says why in its log).

use std::sync::Arc;

use chrono::Duration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Engine, EngineConfig, IdKey, Limits, command::PolicyText};
use crate::policy::Policy;

/// The layout of the encoded state. Bump it with any change to a type the
/// engine's state holds (postcard does not describe itself: an unbumped
/// change would misread). A snapshot of another layout is not loaded: the
/// older snapshot and the log since are used if kept, or the start is
/// refused. So an upgrade that bumps it needs a journal whose log still
/// reaches back to a snapshot of the old layout's start, or a fresh one;
/// the README says how.
pub const STATE_FORMAT: u32 = 11;

/// Why a snapshot cannot be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Written by a build with another state layout.
    #[error("snapshot layout {found}, this build reads layout {STATE_FORMAT}")]
    Format {
        /// The layout it was written in.
        found: u32,
    },
    /// The bytes do not decode (or encode) as an engine state.
    #[error("snapshot does not decode: {0}")]
    Codec(String),
    /// The state decodes but does not fit its own policy (queues counted
    /// differently): refused rather than indexed out of bounds.
    #[error("snapshot does not fit its policy: {0}")]
    Shape(String),
}

impl Engine {
    /// Whether every per-queue table has one entry per queue of the policy,
    /// and every agent's queues exist.
    fn check_shape(&self) -> Result<(), String> {
        let queues = self.policy.queues.len();
        let tables = [
            ("pools", self.roster.queue_count()),
            ("lines", self.waiting.queue_count()),
            ("stats", self.stats.len()),
            ("unstaffed", self.unstaffed_since.len()),
        ];
        for (table, n) in tables {
            if n != queues {
                return Err(format!("{n} {table} for {queues} queues"));
            }
        }
        if let Some(agent) = self
            .roster
            .agents()
            .iter()
            .find(|a| a.queues.iter().any(|&q| q >= queues))
        {
            return Err(format!("agent {} in a queue past {queues}", agent.id));
        }
        Ok(())
    }
}

impl Engine {
    /// The engine's whole state, encoded (between commands: nothing is
    /// pending).
    pub fn encode_state(&self) -> Result<Vec<u8>, SnapshotError> {
        postcard::to_stdvec(&(STATE_FORMAT, self)).map_err(|e| SnapshotError::Codec(e.to_string()))
    }

    /// An engine from [`Engine::encode_state`]'s bytes: the same state, so
    /// the same commands after it decide the same.
    pub fn decode_state(bytes: &[u8]) -> Result<Engine, SnapshotError> {
        // A tuple is its fields in a row: the layout comes first.
        let (found, _) = postcard::take_from_bytes::<u32>(bytes)
            .map_err(|e| SnapshotError::Codec(e.to_string()))?;
        if found != STATE_FORMAT {
            return Err(SnapshotError::Format { found });
        }
        let (_, mut engine): (u32, Engine) =
            postcard::from_bytes(bytes).map_err(|e| SnapshotError::Codec(e.to_string()))?;
        engine.check_shape().map_err(SnapshotError::Shape)?;
        engine.ids = super::ids::IdCipher::new(&engine.config.id_key);
        engine.roster.share_names();
        engine.roster.rebuild_free();
        Ok(engine)
    }
}

/// The policy as its source name and text, parsed again when loaded.
pub(super) mod policy_text {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Arc<Policy>, s: S) -> Result<S::Ok, S::Error> {
        PolicyText {
            source: (&*p.source).into(),
            text: (&*p.text).into(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Policy>, D::Error> {
        let p = PolicyText::deserialize(d)?;
        crate::policy::parse_logged(&p.source, &p.text)
            .map(Arc::new)
            .map_err(serde::de::Error::custom)
    }
}

/// The configuration as the limits it puts in force and the id key.
pub(super) mod config {
    use super::*;

    pub fn serialize<S: Serializer>(c: &EngineConfig, s: S) -> Result<S::Ok, S::Error> {
        (c.limits(), c.id_key).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EngineConfig, D::Error> {
        let (l, id_key) = <(Limits, IdKey)>::deserialize(d)?;
        Ok(EngineConfig {
            idempotency_retention: Duration::milliseconds(l.idempotency_retention_ms),
            max_idempotency_keys: l.max_idempotency_keys,
            path_retention: Duration::milliseconds(l.path_retention_ms),
            max_paths: l.max_paths,
            max_hops: l.max_hops,
            max_agents: l.max_agents,
            id_key,
        })
    }
}

/// A span of time in microseconds.
pub(super) mod duration_micros {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        d.num_microseconds().unwrap_or(i64::MAX).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        i64::deserialize(d).map(Duration::microseconds)
    }
}

/// An outcome kind ([`super::Outcome::kind`]). Named so that serde does not
/// take the field for a string borrowed from the input.
pub type OutcomeKind = &'static str;

/// An outcome kind by name.
pub(super) mod outcome_kind {
    use super::*;

    const KINDS: [&str; 5] = ["agent", "callback", "queued", "emergency", "authenticate"];

    pub fn serialize<S: Serializer>(k: &&'static str, s: S) -> Result<S::Ok, S::Error> {
        k.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OutcomeKind, D::Error> {
        let k = std::borrow::Cow::<str>::deserialize(d)?;
        KINDS
            .into_iter()
            .find(|known| *known == k)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown outcome kind {k:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::new(
            Arc::new(Policy::embedded().unwrap()),
            EngineConfig {
                id_key: IdKey([7; 16]),
                ..EngineConfig::default()
            },
        )
    }

    #[test]
    fn every_outcome_kind_has_a_name_a_snapshot_reads() {
        use super::super::Outcome;
        let text = crate::policy::Text::from("x");
        let script = Outcome::Emergency {
            script_id: text.clone(),
            instruction: text.clone(),
        };
        let auth = Outcome::Authenticate {
            script_id: text.clone(),
            instruction: text,
        };
        for kind in [script.kind(), auth.kind(), "agent", "callback", "queued"] {
            let bytes = postcard::to_stdvec(&kind).unwrap();
            let mut de = postcard::Deserializer::from_bytes(&bytes);
            assert_eq!(outcome_kind::deserialize(&mut de).unwrap(), kind);
        }
    }

    #[test]
    fn another_layout_and_damaged_bytes_are_refused() {
        let e = engine();
        let bytes = e.encode_state().unwrap();
        let loaded = Engine::decode_state(&bytes).unwrap();
        assert_eq!(loaded.config.id_key, IdKey([7; 16]));
        assert_eq!(loaded.limits(), e.limits());

        let mut other = postcard::to_stdvec(&(STATE_FORMAT + 1, &e)).unwrap();
        assert!(matches!(
            Engine::decode_state(&other),
            Err(SnapshotError::Format { found }) if found == STATE_FORMAT + 1
        ));
        other.truncate(other.len() / 2);
        other[0] = STATE_FORMAT as u8;
        assert!(matches!(
            Engine::decode_state(&other),
            Err(SnapshotError::Codec(_))
        ));
    }
}
