//! The files that say who may connect and call: the TLS certificate, key
//! and client CA, and the credentials file. Loaded at start (a bad file
//! stops the start, naming file, line and field); then re-read when their
//! contents change, so certificates and tokens rotate without a restart. A
//! changed file that is refused leaves the previous contents in force.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use crate::auth::Credentials;
use crate::auth::SharedCredentials;
use crate::config::Config;
use crate::file::{self, FileError};
use crate::telemetry;
use crate::tls::{Tls, TlsError, TlsFiles};

/// How often the files are looked at for changes.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Why the files cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The credentials file was refused.
    #[error(transparent)]
    Credentials(#[from] FileError),
    /// A TLS file was refused.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// Some of the TLS files are named, not all that are needed.
    #[error("TLS needs both --tls-cert and --tls-key (and --tls-client-ca only with them)")]
    Incomplete,
}

/// The TLS configuration and credentials in force.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// TLS for both listeners, if configured.
    pub tls: Option<Arc<Tls>>,
    /// Who may call what, if configured.
    pub credentials: Option<SharedCredentials>,
    /// Where the credentials come from.
    credentials_file: Option<PathBuf>,
    /// The contents the credentials in force were parsed from.
    credentials_read: Option<Vec<u8>>,
}

impl Secrets {
    /// Loads the files `config` names.
    pub fn load(config: &Config) -> Result<Secrets, SecretsError> {
        let tls = match (&config.tls_cert, &config.tls_key, &config.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(Arc::new(Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            })?)),
            (None, None, None) => None,
            // Half a TLS configuration is refused, never served as plaintext.
            _ => return Err(SecretsError::Incomplete),
        };
        let (credentials, credentials_read) = match &config.credentials {
            Some(path) => {
                let (file, text) = file::read_text(path)?;
                let credentials = Credentials::parse(&file, &text)?;
                (
                    Some(Arc::new(ArcSwap::from_pointee(credentials))),
                    Some(text.into_bytes()),
                )
            }
            None => (None, None),
        };
        if let Some(tls) = &tls {
            metrics::gauge!(telemetry::TLS_CERT_EXPIRY).set(tls.not_after() as f64);
        }
        Ok(Secrets {
            tls,
            credentials,
            credentials_file: config.credentials.clone(),
            credentials_read,
        })
    }

    /// Re-reads the files every [`RECHECK_EVERY`] until `stop`, swapping in
    /// what changed and is valid; each refusal is logged once (until the
    /// file changes again) and counted.
    pub async fn watch(self, every: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut credentials_read = self.credentials_read.clone();
        let (mut tls_refused, mut unreadable) = (None, false);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Some(tls) = &self.tls {
                match tls.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        tls_refused = None;
                        reloaded("tls", "ok");
                        metrics::gauge!(telemetry::TLS_CERT_EXPIRY).set(tls.not_after() as f64);
                        tracing::info!(
                            not_after = tls.not_after(),
                            "TLS files changed: new connections get the new certificate"
                        );
                    }
                    Err(e) => {
                        let why = e.to_string();
                        if tls_refused.as_ref() != Some(&why) {
                            reloaded("tls", "refused");
                            tracing::error!(error = %why, "TLS files changed but are refused; the previous ones stay in force");
                            tls_refused = Some(why);
                        }
                    }
                }
            }
            if let (Some(path), Some(shared)) = (&self.credentials_file, &self.credentials) {
                let read = match std::fs::read(path) {
                    Ok(read) => {
                        unreadable = false;
                        read
                    }
                    // A file being replaced may be missing for a moment:
                    // what was read last stays in force, and the reading
                    // is tried again. Said once, until it reads again.
                    Err(e) => {
                        if !unreadable {
                            reloaded("credentials", "unreadable");
                            tracing::warn!(file = %path.display(), error = %e, "credentials file cannot be read; the credentials in force stay");
                            unreadable = true;
                        }
                        continue;
                    }
                };
                if credentials_read.as_ref() == Some(&read) {
                    continue;
                }
                // The bytes compared are the bytes parsed.
                let parsed = String::from_utf8(read.clone())
                    .map_err(|_| {
                        file::invalid(
                            &path.display().to_string(),
                            "",
                            0,
                            "(document)",
                            "not UTF-8 text",
                        )
                    })
                    .and_then(|text| Credentials::parse(&path.display().to_string(), &text));
                credentials_read = Some(read);
                match parsed {
                    Ok(credentials) => {
                        reloaded("credentials", "ok");
                        tracing::info!(
                            clients = credentials.len(),
                            "credentials file changed: reloaded"
                        );
                        shared.store(Arc::new(credentials));
                    }
                    // Logged once: the same contents are not parsed again.
                    Err(e) => {
                        reloaded("credentials", "refused");
                        tracing::error!(error = %e, "credentials file changed but is refused; the previous one stays in force");
                    }
                }
            }
        }
    }
}

fn reloaded(file: &'static str, result: &'static str) {
    metrics::counter!(telemetry::FILE_RELOADS, "file" => file, "result" => result).increment(1);
}
