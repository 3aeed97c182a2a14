//! Admission control: a bound on calls in flight across every connection.
//! A call beyond it is refused at once with `RESOURCE_EXHAUSTED` (counted
//! by the metrics layer under that code) instead of queueing without
//! bound, so the calls that are accepted keep their latency and a client
//! can retry elsewhere. Health checks are always admitted (probes must see
//! an overloaded server as alive), and so are client streams, which hold
//! a call open for their whole life (the CTI's agent-state stream).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;
use tower_layer::Layer;
use tower_service::Service;

use super::methods;
use super::status::{Reason, refusal};

/// The layer to add to the tonic server; clones share one bound.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl AdmissionLayer {
    /// At most `limit` calls in flight at once.
    pub fn new(limit: usize) -> AdmissionLayer {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        AdmissionLayer {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

/// Calls that never wait for a permit.
fn always_admitted(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || methods::index(path).is_some_and(|i| methods::all()[i].client_streaming)
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Admission<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if always_admitted(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            let status = refusal(
                tonic::Code::ResourceExhausted,
                format!(
                    "overloaded: {} calls in flight; retry with backoff",
                    self.limit
                ),
                Reason::Overloaded,
                Vec::new(),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let answered = response.await;
            drop(permit);
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that answers when its request's `release` fires.
    #[derive(Clone)]
    struct Held;

    impl Service<http::Request<tokio::sync::oneshot::Receiver<()>>> for Held {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, r: http::Request<tokio::sync::oneshot::Receiver<()>>) -> Self::Future {
            Box::pin(async move {
                let _ = r.into_body().await;
                Ok(http::Response::new(tonic::body::Body::default()))
            })
        }
    }

    fn call(
        s: &mut Admission<Held>,
        path: &str,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>,
    ) {
        let (release, rx) = tokio::sync::oneshot::channel();
        let request = http::Request::builder().uri(path).body(rx).unwrap();
        (release, s.call(request))
    }

    const ROUTE: &str = "/careroute.v1.RoutingService/RouteContact";

    #[tokio::test]
    async fn beyond_the_bound_calls_are_refused_at_once_and_admitted_again_after() {
        let mut s = AdmissionLayer::new(2).layer(Held);
        let (r1, f1) = call(&mut s, ROUTE);
        let (_r2, f2) = call(&mut s, ROUTE);
        let h1 = tokio::spawn(f1);
        let _h2 = tokio::spawn(f2);
        tokio::task::yield_now().await;
        let (_r3, f3) = call(&mut s, ROUTE);
        let refused = f3.await.unwrap();
        assert_eq!(refused.headers()["grpc-status"], "8");
        // Health and client streams are admitted whatever the load.
        let (r4, f4) = call(&mut s, "/grpc.health.v1.Health/Check");
        r4.send(()).unwrap();
        assert!(f4.await.unwrap().headers().get("grpc-status").is_none());
        let (r5, f5) = call(&mut s, "/careroute.v1.RoutingService/StreamAgentStates");
        r5.send(()).unwrap();
        assert!(f5.await.unwrap().headers().get("grpc-status").is_none());
        // One answered: one more is admitted.
        r1.send(()).unwrap();
        h1.await.unwrap().unwrap();
        let (r6, f6) = call(&mut s, ROUTE);
        r6.send(()).unwrap();
        assert!(f6.await.unwrap().headers().get("grpc-status").is_none());
    }
}
