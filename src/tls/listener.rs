//! The listener of /metrics and the probes, for axum: connections from
//! [`super::accept`], plaintext or TLS, each with its [`Peer`].

use std::{future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio_stream::{Stream, StreamExt};

use super::{Conn, Peer, Side, Tls, accept};

/// Connections for axum, with their peers.
pub struct HttpListener {
    incoming: Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>,
    local: SocketAddr,
}

impl HttpListener {
    /// Serves the connections of `listener`, over TLS if `tls` is given;
    /// also returns the accept loop, for the caller to run as long as the
    /// service.
    pub fn new(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<Tls>>,
        handshake: Duration,
    ) -> io::Result<(HttpListener, impl Future<Output = ()> + Send + 'static)> {
        let local = listener.local_addr()?;
        let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (incoming, accepting) = accept(tcp, tls.map(|t| (t, Side::Http)), handshake);
        Ok((
            HttpListener {
                incoming: Box::pin(incoming),
                local,
            },
            accepting,
        ))
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
                // The accept loop yields no errors; it backs off itself.
                Some(Err(_)) => continue,
                // The accept loop ended: its supervisor stops the service.
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
