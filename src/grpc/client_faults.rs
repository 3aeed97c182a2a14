//! A tower layer that gives the client's faults the client's codes. tonic
//! answers two of them before any handler runs, with codes that page the
//! on-call SRE through the server-error alert:
//! - a request body that does not decode gets `INTERNAL`; it is the
//!   client's error: `INVALID_ARGUMENT`, with the decoder's reason;
//! - a request whose connection failed while it was being read (the client
//!   crashed, the network path dropped) gets `UNKNOWN`; the client went
//!   away: `CANCELLED`. The layer watches the request body to know that the
//!   transport failed, rather than guess from a message.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use super::status::{Reason, refusal};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::{Code, Status, body::Body};
use tower_layer::Layer;
use tower_service::Service;

/// How tonic's protobuf codec begins a decode failure's message.
const DECODE_FAILURE: &str = "failed to decode Protobuf message";
/// How tonic begins the status of a request over the decode limit.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The layer to add to the tonic server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFaultsLayer;

impl<S> Layer<S> for ClientFaultsLayer {
    type Service = ClientFaults<S>;

    fn layer(&self, inner: S) -> ClientFaults<S> {
        ClientFaults { inner }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct ClientFaults<S> {
    inner: S,
}

/// A request body that notes a transport failure while it is read.
struct Watched {
    inner: Body,
    failed: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status a client fault deserves instead of `status`, if it is one.
fn client_code(status: &Status, transport_failed: bool) -> Option<Status> {
    match status.code() {
        Code::Unknown if transport_failed => Some(Status::cancelled(
            "the client went away while its request was being read",
        )),
        Code::OutOfRange if status.message().starts_with(TOO_LARGE) => Some(refusal(
            Code::ResourceExhausted,
            format!(
                "the request is larger than careroute decodes ({} bytes): {}",
                super::service::MAX_MESSAGE_BYTES,
                status.message()
            ),
            Reason::RequestTooLarge,
            Vec::new(),
        )),
        Code::Internal if status.message().starts_with(DECODE_FAILURE) => Some(refusal(
            Code::InvalidArgument,
            format!(
                "the request body does not decode as this method's message: {}",
                status.message()
            ),
            Reason::MalformedBody,
            Vec::new(),
        )),
        _ => None,
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ResBody> Service<http::Request<Body>> for ClientFaults<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let failed = Arc::new(AtomicBool::new(false));
        let watched = Arc::clone(&failed);
        let request = request.map(|inner| {
            Body::new(Watched {
                inner,
                failed: watched,
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            // An error answered before any message is trailers-only: its
            // status is in the headers.
            if let Some(status) = Status::from_header_map(response.headers())
                && let Some(better) = client_code(&status, failed.load(Ordering::Relaxed))
            {
                let headers = response.headers_mut();
                headers.remove("grpc-status");
                headers.remove("grpc-message");
                headers.remove("grpc-status-details-bin");
                // Only fails on a message that cannot be a header; ours are
                // plain ASCII.
                let _ = better.add_header(headers);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_client_faults_change_code() {
        let decode = Status::internal("failed to decode Protobuf message: invalid wire type");
        let fixed = client_code(&decode, false).unwrap();
        assert_eq!(fixed.code(), Code::InvalidArgument);
        assert!(fixed.message().contains("invalid wire type"));
        let cut = client_code(
            &Status::unknown("error reading a body from connection"),
            true,
        );
        assert_eq!(cut.unwrap().code(), Code::Cancelled);
        // A server fault stays one.
        assert!(client_code(&Status::unknown("h2 protocol error"), false).is_none());
        assert!(client_code(&Status::internal("internal error"), false).is_none());
        assert!(client_code(&Status::unavailable("halted"), true).is_none());
    }
}
