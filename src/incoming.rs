//! Accepted gRPC connections with a deadline for the HTTP/2 connection
//! preface (or, from an HTTP/JSON client, the first 24 bytes of its HTTP/1.1
//! request): a client that connects and never finishes its first 24 bytes
//! (or trickles them) is cut when the deadline passes, instead of holding
//! a connection, and the shutdown, open forever. After the preface the
//! connection is as it was (TCP, or TLS once its handshake is done).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tonic::transport::server::Connected;

/// Length of the HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;

/// A connection that must deliver the HTTP/2 preface in time.
#[derive(Debug)]
pub struct Prefaced<IO> {
    io: IO,
    /// Until the preface is in; `None` after.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<IO> Prefaced<IO> {
    /// Wraps a just-accepted connection; the preface is due within `within`.
    pub fn new(io: IO, within: Duration) -> Prefaced<IO> {
        Prefaced {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            received: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefaced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP/2 preface not received in time",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.received += buf.filled().len() - before;
            if this.received >= PREFACE_LEN {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefaced<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Prefaced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> IO::ConnectInfo {
        self.io.connect_info()
    }
}
