//! The engine behind its one lock, and the process's fatal signal. A panic
//! while the lock is held poisons it: from then on nothing reads or changes
//! the engine (callers get [`Halted`]) and the server is told to stop and
//! exit non-zero, so its supervisor restarts it from a clean state rather
//! than serve from a half-updated one. Knows nothing of gRPC or metrics
//! labels: the edge maps [`Halted`] to its own error.

use std::{
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use tokio::sync::watch;

use crate::engine::Engine;

/// The engine can no longer be trusted: a panic interrupted a change to it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the routing engine stopped after an internal error; the service is restarting")]
pub struct Halted;

/// Whether this process may change the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The only process on its log (a local journal, or none).
    Alone,
    /// It holds the lease of a replicated log.
    Leader,
    /// It applies the replicated log as the leader writes it, and answers
    /// nothing that changes or reads routing state.
    Standby {
        /// The leader's address, if known.
        leader: Option<String>,
    },
}

/// Why the engine cannot be changed here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Closed {
    /// A panic halted it.
    #[error(transparent)]
    Halted(#[from] Halted),
    /// This process is a standby.
    #[error("this careroute is a standby; send calls to the leader")]
    Standby {
        /// The leader's address, if known.
        leader: Option<String>,
    },
}

/// Tells the server to stop at once and exit non-zero. The first reason
/// raised is the one reported.
#[derive(Debug, Clone)]
pub struct Fatal(watch::Sender<Option<String>>);

impl Fatal {
    /// A signal nobody has raised yet.
    pub fn new() -> Fatal {
        Fatal(watch::channel(None).0)
    }

    /// Raises the signal (once; later reasons are logged only).
    pub fn raise(&self, why: &str) {
        tracing::error!(reason = why, "fatal: the service stops and exits non-zero");
        self.0.send_if_modified(|reason| {
            if reason.is_none() {
                *reason = Some(why.to_owned());
                true
            } else {
                false
            }
        });
    }

    /// Resolves with the reason once the signal is raised.
    pub async fn raised(&self) -> String {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let reason = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        reason.unwrap_or_default()
    }

    /// Whether the signal has been raised.
    pub fn is_raised(&self) -> bool {
        self.0.borrow().is_some()
    }
}

impl Default for Fatal {
    fn default() -> Self {
        Fatal::new()
    }
}

/// The engine and the signal its poisoning raises.
#[derive(Debug)]
pub struct SharedEngine {
    engine: Mutex<Engine>,
    fatal: Fatal,
    role: watch::Sender<Role>,
    /// A leader's lease is surely its own until then; past it, it answers
    /// nothing until renewed (none: no lease to watch).
    deadline: parking_lot::Mutex<Option<Instant>>,
}

impl SharedEngine {
    /// Shares `engine`; a poisoned lock raises `fatal`.
    pub fn new(engine: Engine, fatal: Fatal) -> SharedEngine {
        SharedEngine {
            engine: Mutex::new(engine),
            fatal,
            role: watch::channel(Role::Alone).0,
            deadline: parking_lot::Mutex::new(None),
        }
    }

    /// The engine, if this process may change it: not halted, not a
    /// standby. Checked under the lock, so a standby's engine, which only
    /// the log changes, is never changed by a call.
    pub fn lock_leading(&self) -> Result<MutexGuard<'_, Engine>, Closed> {
        let engine = self.lock()?;
        self.leading()?;
        Ok(engine)
    }

    /// Whether this process may answer now (not a standby, its lease
    /// current), without taking the engine's lock.
    pub fn leading(&self) -> Result<(), Closed> {
        match &*self.role.borrow() {
            Role::Standby { leader } => Err(Closed::Standby {
                leader: leader.clone(),
            }),
            Role::Leader if self.deadline.lock().is_some_and(|d| Instant::now() >= d) => {
                Err(Closed::Standby { leader: None })
            }
            Role::Alone | Role::Leader => Ok(()),
        }
    }

    /// Until when this process's lease is surely its own (none: no lease).
    pub fn set_deadline(&self, until: Option<Instant>) {
        *self.deadline.lock() = until;
    }

    /// Sets the role, under the engine's lock (`_held` proves it is held).
    pub fn set_role(&self, _held: &mut Engine, role: Role) {
        self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }

    /// The role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The engine, unless a panic poisoned it. Never hold the guard across
    /// an `.await`.
    pub fn lock(&self) -> Result<MutexGuard<'_, Engine>, Halted> {
        self.engine.lock().map_err(|_| {
            self.fatal
                .raise("a panic interrupted a change to the routing engine");
            Halted
        })
    }

    /// The signal this engine raises.
    pub fn fatal(&self) -> &Fatal {
        &self.fatal
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::EngineConfig;
    use crate::policy::Policy;

    #[test]
    fn a_panic_under_the_lock_halts_the_engine_and_raises_the_fatal_signal() {
        let fatal = Fatal::new();
        let shared = Arc::new(SharedEngine::new(
            Engine::new(
                Arc::new(Policy::embedded().unwrap()),
                EngineConfig::default(),
            ),
            fatal.clone(),
        ));
        assert!(shared.lock().is_ok());
        let poisoner = Arc::clone(&shared);
        let joined = std::thread::spawn(move || {
            let _engine = poisoner.lock().unwrap();
            panic!("half-way through a change");
        })
        .join();
        assert!(joined.is_err());
        assert!(!fatal.is_raised(), "raised before anyone looked");
        assert!(shared.lock().is_err(), "a poisoned engine was handed out");
        assert!(fatal.is_raised());
    }
}
