//! The files that say who may connect and call: the TLS certificate, key
//! and client CA, and the credentials file. Loaded at start (a bad file
//! stops the start, naming file, line and field); then re-read when their
//! contents change, so certificates and tokens rotate without a restart. A
//! changed file that is refused leaves the previous contents in force.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use crate::auth::Credentials;
use crate::config::Config;
use crate::file::FileError;
use crate::grpc::authorize::SharedCredentials;
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
}

impl Secrets {
    /// Loads the files `config` names.
    pub fn load(config: &Config) -> Result<Secrets, SecretsError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })?)),
            _ => None,
        };
        let credentials = match &config.credentials {
            Some(path) => Some(Arc::new(ArcSwap::from_pointee(Credentials::read(path)?))),
            None => None,
        };
        if let Some(tls) = &tls {
            metrics::gauge!(telemetry::TLS_CERT_EXPIRY).set(tls.not_after() as f64);
        }
        Ok(Secrets {
            tls,
            credentials,
            credentials_file: config.credentials.clone(),
        })
    }

    /// Re-reads the files every [`RECHECK_EVERY`] until `stop`, swapping in
    /// what changed and is valid; each refusal is logged once (until the
    /// file changes again) and counted.
    pub async fn watch(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut credentials_read = self
            .credentials_file
            .as_deref()
            .and_then(|path| std::fs::read(path).ok());
        let mut tls_refused = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(RECHECK_EVERY) => {}
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
                let Ok(read) = std::fs::read(path) else {
                    // A file being replaced may be missing for a moment;
                    // what was read last stays in force.
                    continue;
                };
                if credentials_read.as_ref() == Some(&read) {
                    continue;
                }
                credentials_read = Some(read);
                match Credentials::read(path) {
                    Ok(credentials) => {
                        reloaded("credentials", "ok");
                        tracing::info!(
                            clients = credentials.len(),
                            "credentials file changed: reloaded"
                        );
                        shared.store(Arc::new(credentials));
                    }
                    // Logged once: the same contents are not read again.
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
