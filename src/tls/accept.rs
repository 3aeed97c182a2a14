//! Accepted connections, plaintext or TLS: a loop accepts TCP connections
//! and hands each one over once its TLS handshake is done. Handshakes run
//! side by side, each within the handshake deadline and at most
//! [`MAX_HANDSHAKES`] at once, so a slow or hostile client holds up
//! nobody. A failed accept (out of file descriptors) is retried after a
//! pause, never in a spin. A connection carries its [`Peer`]: the remote
//! address and the names of its verified client certificate, read once at
//! the handshake.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt};

use super::{Side, Tls, identity};
use crate::telemetry;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its address.
    pub remote: Option<SocketAddr>,
    /// The names of its verified client certificate (DNS, URI and e-mail
    /// subject alternative names, then the subject's common names); `None`
    /// without one.
    pub certificate: Option<Arc<[Box<str>]>>,
}

/// An accepted connection.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream, Peer),
    /// TLS over TCP, handshake done.
    Tls(Box<TlsStream<TcpStream>>, Peer),
}

impl Conn {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        match self {
            Conn::Plain(_, peer) | Conn::Tls(_, peer) => peer,
        }
    }
}

/// How many accepted connections may wait to be taken by the server.
const BACKLOG: usize = 64;
/// TLS handshakes in progress at most; beyond it new connections wait in
/// the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// How long to wait after a failed accept that is not one connection's.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts the TCP connections of `tcp` and yields them plain (`tls` is
/// `None`) or after their TLS handshake for `side`, which must finish
/// within `handshake`; a handshake that fails or runs late is counted and
/// logged, and the connection dropped. Returns the connections and the
/// accept loop, which the caller runs as long as the service (it ends
/// when the connections are no longer taken).
pub fn accept<S>(
    tcp: S,
    tls: Option<(Arc<Tls>, Side)>,
    handshake: Duration,
) -> (
    impl Stream<Item = io::Result<Conn>> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
)
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BACKLOG);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let accepting = async move {
        tokio::pin!(tcp);
        loop {
            let next = tokio::select! {
                next = tcp.next() => next,
                () = tx.closed() => return,
            };
            let stream = match next {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    if !one_connections(&e) {
                        tracing::warn!(error = %e, "accept failed; trying again in a second");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            };
            let remote = stream.peer_addr().ok();
            let Some((tls, side)) = &tls else {
                let peer = Peer {
                    remote,
                    certificate: None,
                };
                if tx.send(Ok(Conn::Plain(stream, peer))).await.is_err() {
                    return;
                }
                continue;
            };
            let permit = tokio::select! {
                permit = Arc::clone(&handshakes).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(tls.config(*side));
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshaken = tokio::time::timeout(handshake, acceptor.accept(stream)).await;
                drop(permit);
                match handshaken {
                    Ok(Ok(stream)) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| identity::names(leaf).into());
                        let peer = Peer {
                            remote,
                            certificate,
                        };
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream), peer))).await;
                    }
                    Ok(Err(e)) => refused(remote, &e.to_string()),
                    Err(_) => refused(remote, "not finished in time"),
                }
            });
        }
    };
    (tokio_stream::wrappers::ReceiverStream::new(rx), accepting)
}

/// Whether a failed accept concerns one connection only (the next accept
/// may well succeed at once), as hyper and axum judge it.
fn one_connections(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn refused(remote: Option<SocketAddr>, why: &str) {
    metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES).increment(1);
    tracing::debug!(remote = ?remote, why, "TLS handshake failed");
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io, _) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io, _) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io, _) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io, _) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io, _) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io, _) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io, _) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io, _) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io, _) => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls(io, _) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io, _) => io.is_write_vectored(),
            Conn::Tls(io, _) => io.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer().clone()
    }
}
