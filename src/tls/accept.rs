//! Accepted connections, plaintext or TLS: a task accepts TCP connections
//! and hands each one over once its TLS handshake is done (handshakes run
//! side by side, each within the handshake deadline, so a slow client holds
//! up nobody). A connection carries its [`Peer`]: the remote address and
//! the names of its verified client certificate, read once at handshake.

use std::{
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
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt};

use super::{Side, Tls};
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

/// Accepts the TCP connections of `tcp` and yields them plain (`tls` is
/// `None`) or after their TLS handshake for `side`, which must finish
/// within `handshake`; a handshake that fails or runs late is counted and
/// logged, and the connection dropped. Ends when the stream returned is
/// dropped.
pub fn accept<S>(
    tcp: S,
    tls: Option<(Arc<Tls>, Side)>,
    handshake: Duration,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        tokio::pin!(tcp);
        loop {
            let next = tokio::select! {
                next = tcp.next() => next,
                () = tx.closed() => return,
            };
            let Some(accepted) = next else { return };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
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
            let acceptor = TlsAcceptor::from(tls.config(*side));
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| names(leaf).into());
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
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn refused(remote: Option<SocketAddr>, why: &str) {
    metrics::counter!(telemetry::TLS_HANDSHAKE_FAILURES).increment(1);
    tracing::debug!(remote = ?remote, why, "TLS handshake failed");
}

/// The names a client certificate gives its holder: its DNS, URI and
/// e-mail subject alternative names, then its subject's common names.
fn names(der: &[u8]) -> Vec<Box<str>> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<Box<str>> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) | GeneralName::RFC822Name(n) => {
                    names.push((*n).into())
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.into());
        }
    }
    names
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

/// The listener of /metrics and the probes, for axum: connections from
/// [`accept`].
pub struct HttpListener {
    incoming: Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>,
    local: SocketAddr,
}

impl HttpListener {
    /// Serves the connections of `listener`, over TLS if `tls` is given.
    pub fn new(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<Tls>>,
        handshake: Duration,
    ) -> io::Result<HttpListener> {
        let local = listener.local_addr()?;
        let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Ok(HttpListener {
            incoming: Box::pin(accept(tcp, tls.map(|t| (t, Side::Http)), handshake)),
            local,
        })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.peer().clone();
                    return (conn, peer);
                }
                // As axum does for its TCP listener: a failed accept
                // (out of file descriptors, say) is retried after a pause.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            remote: Some(self.local),
            certificate: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Peer {
        stream.remote_addr().clone()
    }
}
