//! Rebuilding an engine from a log, as a restart and the snapshot shadow
//! both do: from a snapshot, or from the log's first record (the policy it
//! starts from), then every record after it in order. Refusals replay as
//! refusals: the state they leave is the state they left; and each record
//! must come to the result the log says it had.

use std::{path::PathBuf, sync::Arc};

use super::{Diverged, Entry, JournalError};
use crate::engine::{Command, Engine, EngineConfig, ReplacePolicy};
use crate::model::Time;

/// An engine being rebuilt, record by record.
pub struct Replay {
    engine: Option<Engine>,
    config: EngineConfig,
}

/// Why a log cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreplayable {
    /// A log without a snapshot whose first record is not the policy it
    /// starts from.
    NoStart,
    /// A record came to another result than the one it had.
    Diverged(Diverged),
}

impl Unreplayable {
    /// The error of a start on the log in `file`.
    pub fn in_log(self, file: impl Into<PathBuf>) -> JournalError {
        match self {
            Unreplayable::NoStart => JournalError::NoStart { file: file.into() },
            Unreplayable::Diverged(diverged) => JournalError::Diverged {
                file: file.into(),
                diverged,
            },
        }
    }
}

impl Replay {
    /// Starts from `snapshot`, or (none) from the first record applied,
    /// building the engine under `config`.
    pub fn new(snapshot: Option<Engine>, config: EngineConfig) -> Replay {
        Replay {
            engine: snapshot,
            config,
        }
    }

    /// Applies record `seq`.
    pub fn apply(&mut self, seq: u64, entry: Entry) -> Result<(), Unreplayable> {
        self.apply_with(seq, entry, |engine, at, command| {
            let refused = engine.apply(command, at).is_err();
            // Published the first time; not kept across a long replay.
            engine.take_events();
            ((), refused)
        })
        .map(drop)
    }

    /// Applies record `seq` with `apply`, which answers what the caller
    /// keeps of it and whether the engine refused it; none for the log's
    /// first record, which the engine is built from. A record that comes
    /// to another result than the one the log says it had is refused
    /// ([`Unreplayable::Diverged`]): the state rebuilt is not the one its
    /// answer was given from.
    pub fn apply_with<R>(
        &mut self,
        seq: u64,
        entry: Entry,
        apply: impl FnOnce(&mut Engine, Time, Command) -> (R, bool),
    ) -> Result<Option<R>, Unreplayable> {
        let Entry {
            at,
            command,
            refused: then,
            ..
        } = entry;
        let (kept, refused) = match (&mut self.engine, command) {
            (Some(engine), command) => {
                let (kept, refused) = apply(engine, at, command);
                (Some(kept), refused)
            }
            (None, Command::ReplacePolicy(ReplacePolicy(policy))) => {
                self.engine = Some(Engine::new(policy, self.config.clone()));
                (None, false)
            }
            (None, _) => return Err(Unreplayable::NoStart),
        };
        match then {
            Some(then) if then != refused => Err(Unreplayable::Diverged(Diverged {
                seq,
                refused_then: then,
            })),
            _ => Ok(kept),
        }
    }

    /// The engine so far, once there is one; events it decided were
    /// published the first time and are dropped.
    pub fn engine(&mut self) -> Option<&mut Engine> {
        let engine = self.engine.as_mut()?;
        engine.take_events();
        Some(engine)
    }

    /// The text of the policy in force so far, once there is an engine.
    pub fn policy_text(&self) -> Option<&Arc<str>> {
        self.engine.as_ref().map(|e| &e.policy().text)
    }

    /// The engine rebuilt, if the log started one.
    pub fn finish(mut self) -> Option<Engine> {
        self.engine();
        self.engine
    }
}
