//! TLS on both listeners: the server's certificate and key, and for mutual
//! TLS the CA of client certificates, read from files and re-read when they
//! change ([`Tls`]); connections handshaken off the accept loop, each
//! carrying the names of its verified client certificate ([`accept`],
//! [`Peer`]).

mod accept;
mod files;

pub use accept::{Conn, HttpListener, Peer, accept};
pub use files::{Side, Tls, TlsError, TlsFiles};
