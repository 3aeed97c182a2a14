//! TLS on both listeners: the server's certificate and key, and for mutual
//! TLS the CA of client certificates, read from files and re-read when they
//! change ([`Tls`]); connections handshaken off the accept loop, each
//! carrying the names of its verified client certificate ([`accept`],
//! [`Peer`], [`identity`]); the metrics listener for axum
//! ([`HttpListener`]). Nothing here knows the engine or the RPCs.

mod accept;
mod files;
pub mod identity;
mod listener;

pub use accept::{Conn, MAX_HANDSHAKES, Peer, accept};
pub use files::{Side, Tls, TlsError, TlsFiles};
pub use listener::HttpListener;
