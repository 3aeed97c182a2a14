//! Rebuilding an engine from a log, as a restart and the snapshot shadow
//! both do: from a snapshot, or from the log's first record (the policy it
//! starts from), then every record after it in order. Refusals replay as
//! refusals: the state they leave is the state they left.

use crate::engine::{Command, Engine, EngineConfig, ReplacePolicy};
use crate::model::Time;

/// An engine being rebuilt, record by record.
pub struct Replay {
    engine: Option<Engine>,
    config: EngineConfig,
}

/// A log without a snapshot whose first record is not the policy it
/// starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoStart;

impl Replay {
    /// Starts from `snapshot`, or (none) from the first record applied,
    /// building the engine under `config`.
    pub fn new(snapshot: Option<Engine>, config: EngineConfig) -> Replay {
        Replay {
            engine: snapshot,
            config,
        }
    }

    /// Applies one record.
    pub fn apply(&mut self, at: Time, command: Command) -> Result<(), NoStart> {
        self.apply_with(at, command, |engine, at, command| {
            let _ = engine.apply(command, at);
            // Published the first time; not kept across a long replay.
            engine.take_events();
        })
        .map(drop)
    }

    /// Applies one record with `apply`, which answers what the caller
    /// keeps of it; none for the log's first record, which the engine is
    /// built from.
    pub fn apply_with<R>(
        &mut self,
        at: Time,
        command: Command,
        apply: impl FnOnce(&mut Engine, Time, Command) -> R,
    ) -> Result<Option<R>, NoStart> {
        match (&mut self.engine, command) {
            (Some(engine), command) => Ok(Some(apply(engine, at, command))),
            (None, Command::ReplacePolicy(ReplacePolicy(policy))) => {
                self.engine = Some(Engine::new(policy, self.config.clone()));
                Ok(None)
            }
            (None, _) => Err(NoStart),
        }
    }

    /// The engine so far, once there is one; events it decided were
    /// published the first time and are dropped.
    pub fn engine(&mut self) -> Option<&mut Engine> {
        let engine = self.engine.as_mut()?;
        engine.take_events();
        Some(engine)
    }

    /// The engine rebuilt, if the log started one.
    pub fn finish(mut self) -> Option<Engine> {
        self.engine();
        self.engine
    }
}
