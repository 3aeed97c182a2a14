//! The TLS files and the rustls configurations built from them: loaded at
//! start (a refusal names the file and what is wrong with it) and reloaded
//! when a file's contents change; a reload that fails keeps the
//! configuration in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rustls::{RootCertStore, ServerConfig, crypto::ring, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Where the TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// For mutual TLS: the CA certificates of client certificates (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", file.display())]
pub struct TlsError {
    /// The file at fault.
    pub file: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// Which listener a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// gRPC: HTTP/2 only; under mutual TLS a client certificate is required.
    Grpc,
    /// /metrics and the probes: HTTP/1.1; a client certificate is asked for
    /// but optional (probes have none; a scrape may bring a token instead).
    Http,
}

/// What one reading of the files gave.
struct Loaded {
    /// The files' contents, to see whether they changed.
    read: [Vec<u8>; 3],
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// When the server's certificate expires (Unix seconds).
    not_after: i64,
}

/// The TLS configuration in force, swapped whole when the files change.
pub struct Tls {
    files: TlsFiles,
    current: ArcSwap<Loaded>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let loaded = build(&files, read_all(&files)?)?;
        Ok(Tls {
            files,
            current: ArcSwap::from_pointee(loaded),
        })
    }

    /// The configuration for new connections of `side`.
    pub fn config(&self, side: Side) -> Arc<ServerConfig> {
        let current = self.current.load();
        match side {
            Side::Grpc => Arc::clone(&current.grpc),
            Side::Http => Arc::clone(&current.http),
        }
    }

    /// When the certificate in force expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.current.load().not_after
    }

    /// Re-reads the files; if their contents changed and are valid, new
    /// connections get them (connections already open keep theirs).
    /// `Ok(false)`: nothing changed. On an error the configuration in
    /// force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let read = read_all(&self.files)?;
        if read == self.current.load().read {
            return Ok(false);
        }
        self.current.store(Arc::new(build(&self.files, read)?));
        Ok(true)
    }
}

fn read_all(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError {
            file: path.to_owned(),
            why: format!("cannot read: {e}"),
        })
    };
    Ok([
        read(&files.cert)?,
        read(&files.key)?,
        match &files.client_ca {
            Some(path) => read(path)?,
            None => Vec::new(),
        },
    ])
}

fn build(files: &TlsFiles, read: [Vec<u8>; 3]) -> Result<Loaded, TlsError> {
    let fault = |file: &Path, why: String| TlsError {
        file: file.to_owned(),
        why,
    };
    let chain = certificates(&files.cert, &read[0])?;
    let key = PrivateKeyDer::from_pem_slice(&read[1]).map_err(|e| {
        fault(
            &files.key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let not_after = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .map_err(|e| fault(&files.cert, format!("the first certificate: {e}")))?;
    let provider = Arc::new(ring::default_provider());
    let roots = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, &read[2])? {
                roots
                    .add(cert)
                    .map_err(|e| fault(path, format!("a certificate cannot be read: {e}")))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let config = |side: Side| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| fault(&files.cert, e.to_string()))?;
        let builder = match (&roots, side) {
            (Some(roots), side) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(roots),
                    provider.clone(),
                );
                let verifier = match side {
                    Side::Grpc => verifier,
                    Side::Http => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| {
                    fault(
                        files.client_ca.as_deref().unwrap_or(&files.cert),
                        e.to_string(),
                    )
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, _) => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                fault(
                    &files.key,
                    format!("cannot be used with {}: {e}", files.cert.display()),
                )
            })?;
        config.alpn_protocols = match side {
            // HTTP/1.1 for HTTP/JSON clients beside gRPC.
            Side::Grpc => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Side::Http => vec![b"http/1.1".to_vec()],
        };
        Ok(Arc::new(config))
    };
    Ok(Loaded {
        grpc: config(Side::Grpc)?,
        http: config(Side::Http)?,
        not_after,
        read,
    })
}

/// The PEM certificates of `text`, at least one.
fn certificates(path: &Path, text: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError {
            file: path.to_owned(),
            why: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            file: path.to_owned(),
            why: "no certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        });
    }
    Ok(certs)
}
