//! Authorization at the edge. With a credentials file, a call to the
//! routing service must carry `authorization: Bearer <token>` of a client
//! whose roles include the RPC's ([`crate::auth::role_of`]): no token or an
//! unknown one is `UNAUTHENTICATED`, a client without the role is
//! `PERMISSION_DENIED`, each counted by method and role (never by client).
//! The client found rides in the request's extensions as a [`Caller`], for
//! logs and audit. Health and reflection stay open (probes and tools need
//! them; they tell nothing about contacts). Without a credentials file
//! every call passes: the service then listens on loopback only, or was
//! told `--insecure`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{Client, Credentials, ROUTING_SERVICE, Role, role_of};
use crate::telemetry;

/// Who made a call, as the credentials file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

/// The layer to add to the tonic server.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    credentials: Option<Arc<Credentials>>,
}

impl AuthorizeLayer {
    /// Checks every call against `credentials` (none: every call passes).
    pub fn new(credentials: Option<Arc<Credentials>>) -> AuthorizeLayer {
        AuthorizeLayer { credentials }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    credentials: Option<Arc<Credentials>>,
}

/// Why a call is refused, before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one no client has.
    Unauthenticated,
    /// The client lacks the role.
    Denied(String),
}

/// The bearer token of an `authorization` header value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The client a request's `authorization` header names, if any.
pub fn client<'c>(credentials: &'c Credentials, headers: &http::HeaderMap) -> Option<&'c Client> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    credentials.client(bearer(value)?)
}

/// Checks a call of `method` of the routing service (which needs `role`).
pub fn check<'c>(
    credentials: &'c Credentials,
    headers: &http::HeaderMap,
    role: Role,
) -> Result<&'c Client, Refusal> {
    let client = client(credentials, headers).ok_or(Refusal::Unauthenticated)?;
    if client.roles.contains(&role) {
        Ok(client)
    } else {
        Err(Refusal::Denied(client.name.clone()))
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authorize<S>
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

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(credentials) = &self.credentials else {
            return Box::pin(self.inner.call(request));
        };
        let path = request.uri().path();
        let Some(method) = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(ROUTING_SERVICE))
            .and_then(|p| p.strip_prefix('/'))
        else {
            // Health, reflection, and paths no service has (tonic answers
            // UNIMPLEMENTED).
            return Box::pin(self.inner.call(request));
        };
        let Some(role) = role_of(method) else {
            return Box::pin(self.inner.call(request));
        };
        let refused = match check(credentials, request.headers(), role) {
            Ok(client) => {
                let caller = Caller(Arc::from(client.name.as_str()));
                request.extensions_mut().insert(caller);
                return Box::pin(self.inner.call(request));
            }
            Err(Refusal::Unauthenticated) => {
                count(method, role, "unauthenticated");
                Status::unauthenticated(
                    "a bearer token of a client in the credentials file is required (authorization: Bearer <token>)",
                )
            }
            Err(Refusal::Denied(name)) => {
                count(method, role, "permission_denied");
                tracing::warn!(
                    client = name.as_str(),
                    method,
                    role = role.as_str(),
                    "call refused: the client lacks the role"
                );
                Status::permission_denied(format!(
                    "this client may not call {method}: it needs the {} role",
                    role.as_str()
                ))
            }
        };
        Box::pin(std::future::ready(Ok(refused.into_http())))
    }
}

fn count(method: &str, role: Role, code: &'static str) {
    // The method is one of the service's (role_of knew it): a bounded set.
    metrics::counter!(
        telemetry::AUTH_REFUSALS,
        "method" => method.to_owned(),
        "role" => role.as_str(),
        "code" => code
    )
    .increment(1);
}
