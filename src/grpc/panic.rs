//! A tower layer that turns a panicking handler into an `INTERNAL` answer
//! (instead of a reset stream counted as `CANCELLED`) and raises the fatal
//! signal: the process stops and exits non-zero rather than keep serving
//! after a fault it did not expect. Sits inside the metrics layer, so the
//! call is counted as `INTERNAL` and the server-error alert sees it. It
//! watches the handler's future, not a streaming response's body: a panic
//! there is caught by tokio, resets the stream, and is not counted here.

use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

use super::status::{Reason, refusal};
use crate::shared::Fatal;
use crate::telemetry::PANICS;

/// The layer to add to the tonic server.
#[derive(Debug, Clone)]
pub struct CatchPanicLayer {
    fatal: Fatal,
}

impl CatchPanicLayer {
    /// Raises `fatal` when a handler panics.
    pub fn new(fatal: Fatal) -> CatchPanicLayer {
        CatchPanicLayer { fatal }
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic {
            inner,
            fatal: self.fatal.clone(),
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
    fatal: Fatal,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CatchPanic<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let fatal = self.fatal.clone();
        let mut response = Box::pin(self.inner.call(request));
        Box::pin(std::future::poll_fn(move |cx| {
            match catch_unwind(AssertUnwindSafe(|| response.as_mut().poll(cx))) {
                Ok(polled) => polled,
                Err(_) => {
                    metrics::counter!(PANICS).increment(1);
                    fatal.raise("a request handler panicked");
                    Poll::Ready(Ok(refusal(
                        tonic::Code::Internal,
                        "internal error",
                        Reason::InternalError,
                        Vec::new(),
                    )
                    .into_http()))
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler whose future panics on first poll.
    #[derive(Clone)]
    struct Panics;

    impl Service<http::Request<()>> for Panics {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async { panic!("a bug") })
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_raises_the_fatal_signal() {
        let fatal = Fatal::new();
        let mut service = CatchPanicLayer::new(fatal.clone()).layer(Panics);
        let response = service.call(http::Request::new(())).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "13");
        assert!(fatal.is_raised());
        assert_eq!(fatal.raised().await, "a request handler panicked");
    }
}
