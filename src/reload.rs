//! Policy reloads: the `--policy` file re-read on SIGHUP and whenever its
//! contents change, and which changes are news to the log. A change this
//! process saw is applied once it leads; a policy another leader put in
//! force after this process read its file is never rolled back to it.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::engine::ReplacePolicy;
use crate::grpc::Routing;
use crate::policy;
use crate::telemetry;

/// The policy of a replicated log as this process reads and follows it
/// (none until it has read the log): how many times it changed since this
/// process first read the log, and its text.
pub type LogPolicy = Option<(u64, Arc<str>)>;

/// What this process knows of its policy file, to tell a change of its
/// own from a policy the log already moved on from: the file is news while
/// it holds a change the log does not, and the log's policy has not
/// changed since the file was last seen to change.
#[derive(Debug)]
pub struct FileSeen {
    /// The file as last read.
    seen: Vec<u8>,
    /// How many times the log's policy had changed when the file was seen
    /// to change (at start: 0, the log as this process first reads it).
    seen_at: u64,
    /// The file holds a change not yet applied, refused or found in force.
    pending: bool,
}

impl FileSeen {
    /// The file as a start read it. `replicated`: the log's policy is read
    /// later, so the file may be news to it (as a local start logs a file
    /// that differs as a reload, which it has done by now).
    pub fn at_start(text: &str, replicated: bool) -> FileSeen {
        FileSeen {
            seen: text.as_bytes().to_vec(),
            seen_at: 0,
            pending: replicated,
        }
    }

    /// Looks at the file's contents `now` and at the log's policy `log`
    /// (its changes so far and its text; none: not read yet): whether the
    /// file is a change to apply. A file that changed is news; a policy
    /// put in force since (by another leader) makes it old news; a file
    /// the log already holds is settled.
    pub fn look(&mut self, now: &[u8], log: Option<(u64, &str)>) -> bool {
        if now != self.seen.as_slice() {
            self.seen = now.to_vec();
            // Changed since the last look: after the log's changes so far
            // (which came first is not known; the file is this process's
            // own news).
            self.seen_at = log.map_or(0, |(changes, _)| changes);
            self.pending = true;
        }
        let Some((changes, text)) = log else {
            return false;
        };
        if now == text.as_bytes() || changes != self.seen_at {
            self.pending = false;
        }
        self.pending
    }

    /// The file as last read was applied or refused: not news again until
    /// it changes.
    pub fn dealt(&mut self) {
        self.pending = false;
    }
}

/// Re-reads the policy file on SIGHUP, and when its contents change (looked
/// at every `every`): a Kubernetes ConfigMap update sends no signal, it
/// swaps the mounted file. Only the leader reloads: a change seen while a
/// standby is applied once this process leads, a file that is what the log
/// already holds is not reloaded, and a policy another leader put in force
/// since is not rolled back (see [`FileSeen`]). `log_policy` tells the
/// policy of a replicated log as this process follows it. An invalid
/// file is refused with its message and the running policy stays; the same
/// contents are not tried again until they change or a SIGHUP asks. On the
/// embedded policy there is nothing to re-read: SIGHUP is logged and
/// otherwise ignored (its default action would end the process).
pub async fn reload_on_change(
    mut hangups: Hangups,
    path: Option<(PathBuf, FileSeen)>,
    log_policy: watch::Receiver<LogPolicy>,
    routing: Routing,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut path = path;
    loop {
        let asked = tokio::select! {
            _ = &mut stop => return,
            _ = hangup(&mut hangups) => true,
            _ = tick.tick() => false,
        };
        let Some((path, seen)) = &mut path else {
            if asked {
                tracing::info!(
                    "SIGHUP: no --policy file, nothing to reload; the policy in force stays (the journal's, or the embedded one on a new journal or with --no-journal)"
                );
            }
            continue;
        };
        // A file being replaced can be missing for a moment: looked at
        // again next time.
        let Ok(now) = tokio::fs::read(&path).await else {
            if asked {
                tracing::error!(path = %path.display(), "SIGHUP: the policy file cannot be read; the running policy stays");
            }
            continue;
        };
        // The log's policy: the engine's while this process leads (its
        // changes as this process last followed them: only the leader
        // changes it), the one it follows while it stands by.
        let leading = routing.engine().leading().is_ok();
        let followed = log_policy.borrow().clone();
        let changes = followed.as_ref().map_or(0, |(changes, _)| *changes);
        let log = if leading {
            routing.view(|e| Arc::clone(&e.policy().text)).ok()
        } else {
            followed.map(|(_, text)| text)
        };
        // Looked at on a SIGHUP too, so the file it reloads is the one
        // dealt with after, and not news again at the next look.
        let news = seen.look(&now, log.as_deref().map(|text| (changes, text)));
        // Only the leader changes the policy (a standby takes the
        // leader's from the log, and applies its own news once it leads).
        if !asked {
            if !news || !leading {
                continue;
            }
            tracing::info!(path = %path.display(), "the policy file changed and differs from the policy in force; reloading");
        }
        match reload(path, &routing).await {
            Reloaded::Applied | Reloaded::Refused => seen.dealt(),
            Reloaded::NotApplied => {}
        }
    }
}

/// The next SIGHUP; never, where there are none to listen for.
#[cfg(unix)]
async fn hangup(hangups: &mut Hangups) {
    match hangups {
        Some(h) => {
            if h.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn hangup(_hangups: &mut Hangups) {
    std::future::pending::<()>().await
}

/// The SIGHUP listener, once installed (`None` if it cannot be).
#[cfg(unix)]
pub type Hangups = Option<tokio::signal::unix::Signal>;
/// No SIGHUP to listen for.
#[cfg(not(unix))]
pub type Hangups = ();

/// Starts listening for SIGHUP (before the service serves, so an early one
/// does not end the process).
#[cfg(unix)]
pub fn listen_for_hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot listen for SIGHUP: policy reload disabled"),
        )
        .ok()
}

/// No SIGHUP to listen for.
#[cfg(not(unix))]
pub fn listen_for_hangups() -> Hangups {}

/// What became of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The new policy is in force.
    Applied,
    /// The file was refused (its error logged); the running policy stays.
    Refused,
    /// A valid file not applied: this process does not lead, or the
    /// journal did not take the change.
    NotApplied,
}

/// Loads `path` and swaps it in if valid, through the service's one door
/// (so the callbacks and withdrawals it decides are streamed).
pub async fn reload(path: &std::path::Path, routing: &Routing) -> Reloaded {
    match policy::read(path) {
        Ok(p) => {
            let version = p.version.clone();
            if let Err(status) = routing.apply(ReplacePolicy(Arc::new(p))).await {
                tracing::info!(%version, reason = status.message(), "policy reload not applied");
                return Reloaded::NotApplied;
            }
            metrics::counter!(telemetry::POLICY_RELOADS, "result" => "ok").increment(1);
            tracing::info!(%version, "policy reloaded");
            Reloaded::Applied
        }
        Err(e) => {
            metrics::counter!(telemetry::POLICY_RELOADS, "result" => "refused").increment(1);
            tracing::error!(error = %e, "policy reload refused; the running policy stays");
            Reloaded::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_while_running_is_news_until_dealt_with_or_in_force() {
        let mut seen = FileSeen::at_start("a", false);
        assert!(!seen.look(b"a", Some((0, "a"))));
        assert!(seen.look(b"b", Some((0, "a"))));
        assert!(seen.look(b"b", Some((0, "a"))));
        seen.dealt();
        assert!(!seen.look(b"b", Some((0, "a"))));
        // Changed again, then found in force.
        assert!(seen.look(b"c", Some((0, "a"))));
        assert!(!seen.look(b"c", Some((1, "c"))));
    }

    #[test]
    fn a_policy_another_leader_put_in_force_is_not_rolled_back() {
        // A standby whose file never changed: the leader reloads "c",
        // before or after this process first looks.
        let mut seen = FileSeen::at_start("a", true);
        assert!(!seen.look(b"a", None));
        assert!(!seen.look(b"a", Some((1, "c"))));
        let mut seen = FileSeen::at_start("a", true);
        assert!(!seen.look(b"a", Some((0, "a"))));
        assert!(!seen.look(b"a", Some((1, "c"))));
        // Its file went a, b while the leader's went a, b, c: b was put in
        // force, then c; b is old news.
        let mut seen = FileSeen::at_start("a", true);
        assert!(!seen.look(b"a", Some((0, "a"))));
        assert!(seen.look(b"b", Some((0, "a"))));
        assert!(!seen.look(b"b", Some((1, "b"))));
        assert!(!seen.look(b"b", Some((2, "c"))));
    }

    #[test]
    fn a_new_file_a_replicated_start_brings_is_news_until_the_log_moves_on() {
        // Started with a new file on a log still on the old policy: news,
        // as a local start logs it as a reload.
        let mut seen = FileSeen::at_start("new", true);
        // Before the log was read, nothing is known to be news.
        assert!(!seen.look(b"new", None));
        assert!(seen.look(b"new", Some((0, "old"))));
        assert!(seen.look(b"new", Some((0, "old"))));
        // Another leader put "newer" in force since: old news.
        assert!(!seen.look(b"new", Some((1, "newer"))));
    }

    #[test]
    fn a_file_and_a_log_that_both_changed_between_two_looks_leave_the_file_news() {
        let mut seen = FileSeen::at_start("a", false);
        assert!(!seen.look(b"a", Some((0, "a"))));
        assert!(seen.look(b"b", Some((1, "c"))));
    }
}
