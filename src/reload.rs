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

/// What this process knows of its policy file, to tell a change of its
/// own from a policy the log already moved on from.
#[derive(Debug)]
pub struct FileSeen {
    /// The file as this process last dealt with it: read at start,
    /// reloaded, or refused.
    seen: Vec<u8>,
    /// The file read at start may hold a change the log does not (a
    /// process started on a replicated log with a new file): applied when
    /// this process leads, unless the log's policy changed since this
    /// process first read the log (another leader decided later).
    start_pending: bool,
}

impl FileSeen {
    /// The file as a start read it. `replicated`: the log's policy is read
    /// later, so the file may still be news to it; a local start has
    /// already logged a file that differs as a reload.
    pub fn at_start(text: &str, replicated: bool) -> FileSeen {
        FileSeen {
            seen: text.as_bytes().to_vec(),
            start_pending: replicated,
        }
    }

    /// Whether the file's contents `now` are a change to apply, against
    /// the policy in force in the log and, on a replicated log, the policy
    /// the log held when this process first read it. A file already in
    /// force is settled.
    pub fn is_news(&mut self, now: &[u8], in_force: &[u8], first_read: Option<&[u8]>) -> bool {
        if now == in_force {
            self.dealt(now);
            return false;
        }
        // Changed while this process ran: its own news, wherever it stood.
        if now != self.seen.as_slice() {
            return true;
        }
        // Unchanged since the start: news only if the log's policy is still
        // the one this process found (else a later decision is in force).
        self.start_pending && first_read == Some(in_force)
    }

    /// The contents `now` were applied, refused, or found in force: not
    /// news again until they change.
    pub fn dealt(&mut self, now: &[u8]) {
        self.seen = now.to_vec();
        self.start_pending = false;
    }
}

/// Re-reads the policy file on SIGHUP, and when its contents change (looked
/// at every `every`): a Kubernetes ConfigMap update sends no signal, it
/// swaps the mounted file. Only the leader reloads: a change seen while a
/// standby is applied once this process leads, a file that is what the log
/// already holds is not reloaded, and a policy another leader put in force
/// since is not rolled back (see [`FileSeen`]). `first_read` tells the
/// log's policy when this process first read a replicated log. An invalid
/// file is refused with its message and the running policy stays; the same
/// contents are not tried again until they change or a SIGHUP asks. On the
/// embedded policy there is nothing to re-read: SIGHUP is logged and
/// otherwise ignored (its default action would end the process).
pub async fn reload_on_change(
    mut hangups: Hangups,
    path: Option<(PathBuf, FileSeen)>,
    first_read: watch::Receiver<Option<Arc<str>>>,
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
        if !asked {
            // Only the leader changes the policy (a standby takes the
            // leader's from the log).
            if routing.engine().leading().is_err() {
                continue;
            }
            let first = first_read.borrow().clone();
            let news = routing.view(|e| {
                seen.is_news(
                    &now,
                    e.policy().text.as_bytes(),
                    first.as_deref().map(str::as_bytes),
                )
            });
            if !news.unwrap_or(false) {
                continue;
            }
            tracing::info!(path = %path.display(), "the policy file changed and differs from the policy in force; reloading");
        }
        match reload(path, &routing).await {
            Reloaded::Applied | Reloaded::Refused => seen.dealt(&now),
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
    fn a_file_changed_while_running_is_news_until_dealt_with() {
        let mut seen = FileSeen::at_start("a", false);
        assert!(!seen.is_news(b"a", b"a", None));
        assert!(seen.is_news(b"b", b"a", None));
        // A standby that saw the change applies it once it leads, even if
        // the log moved on meanwhile: its change is the later one.
        assert!(seen.is_news(b"b", b"c", None));
        seen.dealt(b"b");
        assert!(!seen.is_news(b"b", b"c", None));
    }

    #[test]
    fn a_policy_another_leader_put_in_force_is_not_rolled_back() {
        // Started on a replicated log whose policy was the file's; another
        // leader reloaded "c" since: the unchanged file is not news.
        let mut seen = FileSeen::at_start("a", true);
        assert!(!seen.is_news(b"a", b"c", Some(b"a")));
        // Nor once the log's policy is read back as it was found, if the
        // file was already settled in force.
        assert!(!seen.is_news(b"a", b"a", Some(b"a")));
        assert!(!seen.is_news(b"a", b"c", Some(b"c")));
    }

    #[test]
    fn a_new_file_a_replicated_start_brings_is_applied_when_it_leads() {
        // A process started with a new file on a log still on the old
        // policy: news, as a local start logs it as a reload.
        let mut seen = FileSeen::at_start("new", true);
        assert!(seen.is_news(b"new", b"old", Some(b"old")));
        // Unless another leader changed the policy since this process
        // first read the log: that decision is the later one.
        assert!(!seen.is_news(b"new", b"newer", Some(b"old")));
        // Before the log was read, nothing is known to be news.
        assert!(!seen.is_news(b"new", b"old", None));
        seen.dealt(b"new");
        assert!(!seen.is_news(b"new", b"old", Some(b"old")));
    }
}
