//! A tower layer that gives every call whose client sends one message a
//! deadline to be received and answered: a request trickled in byte by byte
//! is answered `DEADLINE_EXCEEDED` when it passes, instead of holding a
//! stream (and a slot of the admission limit) for as long as the client
//! likes. Client-streaming calls (the CTI's agent-state stream, reflection)
//! are exempt, read from the descriptor; server streams answer their
//! headers at once, so their open-ended body is never cut. Clients' own
//! `grpc-timeout` deadlines still apply on top.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tower_layer::Layer;
use tower_service::Service;

use super::methods;
use super::status::{Reason, refusal};

/// The layer to add to the tonic server.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadlineLayer {
    within: Duration,
}

impl RequestDeadlineLayer {
    /// Calls must be received and answered within `within`.
    pub fn new(within: Duration) -> RequestDeadlineLayer {
        RequestDeadlineLayer { within }
    }
}

impl<S> Layer<S> for RequestDeadlineLayer {
    type Service = RequestDeadline<S>;

    fn layer(&self, inner: S) -> RequestDeadline<S> {
        RequestDeadline {
            inner,
            within: self.within,
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct RequestDeadline<S> {
    inner: S,
    within: Duration,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestDeadline<S>
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
        let streaming = methods::index(request.uri().path())
            .is_some_and(|i| methods::all()[i].client_streaming);
        let response = self.inner.call(request);
        if streaming {
            return Box::pin(response);
        }
        let within = self.within;
        Box::pin(async move {
            match tokio::time::timeout(within, response).await {
                Ok(answered) => answered,
                Err(_) => Ok(refusal(
                    tonic::Code::DeadlineExceeded,
                    format!(
                        "the request was not received and answered within {} ms",
                        within.as_millis()
                    ),
                    Reason::ServerDeadline,
                    Vec::new(),
                )
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler still waiting for its request body.
    #[derive(Clone)]
    struct NeverAnswers;

    impl Service<http::Request<()>> for NeverAnswers {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(std::future::pending())
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_single_message_call_is_cut_and_a_client_stream_is_not() {
        let mut service = RequestDeadlineLayer::new(Duration::from_secs(10)).layer(NeverAnswers);
        let response = service
            .call(request("/careroute.v1.RoutingService/RouteContact"))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
        let stream = service.call(request("/careroute.v1.RoutingService/StreamAgentStates"));
        let waited = tokio::time::timeout(Duration::from_secs(3600), stream).await;
        assert!(waited.is_err(), "the agent-state stream was cut");
    }
}
