//! Authorization at the edge. With a credentials file, a call to the
//! routing service must come from a client whose roles include the RPC's
//! ([`crate::auth::role_of`]), known by `authorization: Bearer <token>` or,
//! without that header, by the verified client certificate of its
//! connection (mutual TLS): no token or an unknown one, and no certificate
//! the file names, is `UNAUTHENTICATED`; a client without the role is
//! `PERMISSION_DENIED`, each counted by method and role (never by client).
//! A stream is let in again for each message it carries ([`Grant`]): a
//! client shut out of the file mid-stream is refused there.
//! The client found rides in the request's extensions as a [`Caller`], for
//! logs and audit. Health and reflection stay open (probes and tools need
//! them; they tell nothing about contacts); every other path, whatever
//! service it names, is refused unless a client holds its role (fail
//! closed). `/metrics` is guarded the same way ([`metrics_gate`]). Without
//! a credentials file every call passes.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use super::methods;
use super::status::Reason;
use crate::auth::{Client, Credentials, ROUTING_SERVICE, Role, SharedCredentials, role_of};
use crate::telemetry;
use crate::tls::Peer;

/// Who made a call, as the credentials file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

tokio::task_local! {
    /// The client of the call being handled, for the journal's record of
    /// who changed what.
    static CALLER: Arc<str>;
}

/// The client of the call this task is handling, if credentials named one.
pub fn caller() -> Option<Arc<str>> {
    CALLER.try_with(Arc::clone).ok()
}

/// The layer to add to the tonic server.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    credentials: Option<SharedCredentials>,
}

impl AuthorizeLayer {
    /// Checks every call against `credentials` (none: every call passes).
    pub fn new(credentials: Option<SharedCredentials>) -> AuthorizeLayer {
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
    credentials: Option<SharedCredentials>,
}

/// Why a call is refused, before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one no client has; and no certificate a client has.
    Unauthenticated,
    /// The client (named) lacks the role.
    Denied(Arc<str>),
}

/// The bearer token of an `authorization` header value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The client a request names: by its `authorization` header if it has
/// one (an unknown token is not made good by a certificate), else by its
/// connection's verified client certificate. Two or more `authorization`
/// headers name nobody: which one counts would be a proxy's guess.
fn client<'c>(
    credentials: &'c Credentials,
    headers: &http::HeaderMap,
    peer: Option<&Peer>,
) -> Option<&'c Client> {
    let mut sent = headers.get_all(http::header::AUTHORIZATION).iter();
    match (sent.next(), sent.next()) {
        (Some(value), None) => credentials.client(bearer(value.to_str().ok()?)?),
        (Some(_), Some(_)) => None,
        (None, _) => credentials.certified(peer?.certificate.as_deref()?),
    }
}

/// Checks a call that needs `role`.
pub fn check<'c>(
    credentials: &'c Credentials,
    headers: &http::HeaderMap,
    peer: Option<&Peer>,
    role: Role,
) -> Result<&'c Client, Refusal> {
    let client = client(credentials, headers, peer).ok_or(Refusal::Unauthenticated)?;
    if client.roles.contains(&role) {
        Ok(client)
    } else {
        Err(Refusal::Denied(Arc::clone(&client.name)))
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
        if open(path) {
            return Box::pin(self.inner.call(request));
        }
        // Any other path needs a role: one of the routing service's RPCs,
        // or nothing (a path no table knows is refused, not let through).
        let known = methods::index(path)
            .map(|i| &methods::all()[i])
            .filter(|m| m.service == ROUTING_SERVICE)
            .and_then(|m| Some((m, role_of(&m.name)?)));
        let shared = credentials;
        let credentials = shared.load();
        let peer = request.extensions().get::<Peer>();
        let Some((rpc, role)) = known else {
            // Who is calling is asked first, as for any call: a caller no
            // client of the file is hears UNAUTHENTICATED, not what paths
            // exist.
            let refused = if client(&credentials, request.headers(), peer).is_none() {
                count("unknown", "none", "unauthenticated");
                unauthenticated()
            } else {
                count("unknown", "none", "permission_denied");
                super::status::refusal(
                    Code::PermissionDenied,
                    "no role may call this path",
                    Reason::RoleRequired,
                    Vec::new(),
                )
            };
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        let method = rpc.name.as_str();
        let refusal = match check(&credentials, request.headers(), peer, role) {
            Ok(client) => {
                let name = Arc::clone(&client.name);
                if rpc.client_streaming || rpc.server_streaming {
                    let grant = Grant {
                        credentials: Arc::clone(shared),
                        checked: Arc::clone(&credentials),
                        authorization: request
                            .headers()
                            .get_all(http::header::AUTHORIZATION)
                            .iter()
                            .cloned()
                            .collect(),
                        peer: peer.cloned(),
                        client: Arc::clone(&name),
                        method,
                        role,
                    };
                    request.extensions_mut().insert(grant);
                }
                request.extensions_mut().insert(Caller(Arc::clone(&name)));
                // The handler runs inside this scope: what it logs is
                // recorded as this client's.
                return Box::pin(CALLER.scope(name, self.inner.call(request)));
            }
            Err(refused) => refused,
        };
        let refused = refused(method, role, refusal, "call refused");
        Box::pin(std::future::ready(Ok(refused.into_http())))
    }
}

/// The status a refused call (or stream message) is answered with, counted
/// and logged as `what`.
fn refused(method: &'static str, role: Role, refusal: Refusal, what: &str) -> tonic::Status {
    match refusal {
        Refusal::Unauthenticated => {
            count(method, role.as_str(), "unauthenticated");
            tracing::debug!(method, "{what}: no known bearer token");
            unauthenticated()
        }
        Refusal::Denied(name) => {
            count(method, role.as_str(), "permission_denied");
            tracing::warn!(
                client = &*name,
                method,
                role = role.as_str(),
                "{what}: the client lacks the role"
            );
            super::status::refusal(
                Code::PermissionDenied,
                format!(
                    "this client may not call {method}: it needs the {} role",
                    role.as_str()
                ),
                Reason::RoleRequired,
                Vec::new(),
            )
        }
    }
}

/// The refusal of a caller no client of the file is.
fn unauthenticated() -> tonic::Status {
    super::status::refusal(
        Code::Unauthenticated,
        "a client of the credentials file is required: its bearer token (authorization: Bearer <token>) or, under mutual TLS, its certificate",
        Reason::Unauthenticated,
        Vec::new(),
    )
}

/// What let a streaming call in, kept in its extensions so each message
/// it carries either way is checked again against the credentials then in
/// force: a client whose entry leaves the file, whose token or certificate
/// name changes, or who loses the role, is cut off mid-stream as a new call
/// would be refused, not when it reconnects.
#[derive(Debug, Clone)]
pub struct Grant {
    credentials: SharedCredentials,
    /// The credentials last found to let it in (checked again only once
    /// they are swapped).
    checked: Arc<Credentials>,
    authorization: Vec<http::HeaderValue>,
    peer: Option<Peer>,
    /// Who it let in, for the log.
    client: Arc<str>,
    method: &'static str,
    role: Role,
}

impl Grant {
    /// Whether the call may go on: the refusal to end it with if not.
    pub fn recheck(&mut self) -> Result<(), tonic::Status> {
        let now = self.credentials.load();
        if Arc::ptr_eq(&now, &self.checked) {
            return Ok(());
        }
        let mut headers = http::HeaderMap::new();
        for value in &self.authorization {
            headers.append(http::header::AUTHORIZATION, value.clone());
        }
        // The token or certificate now someone else's is not this stream's
        // client: its records would name the wrong one.
        let same_client = check(&now, &headers, self.peer.as_ref(), self.role).and_then(|c| {
            if c.name == self.client {
                Ok(())
            } else {
                Err(Refusal::Unauthenticated)
            }
        });
        match same_client {
            Ok(()) => {
                self.checked = arc_swap::Guard::into_inner(now);
                Ok(())
            }
            Err(refusal) => {
                tracing::warn!(
                    client = &*self.client,
                    method = self.method,
                    "stream refused: the client's credentials changed since it began"
                );
                Err(refused(self.method, self.role, refusal, "stream refused"))
            }
        }
    }
}

/// Paths open to anyone: health and reflection.
fn open(path: &str) -> bool {
    [
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1.ServerReflection/",
        "/grpc.reflection.v1alpha.ServerReflection/",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
}

/// Whether a scrape of `/metrics` may be answered: with credentials, only
/// for a client with the observe role. A refusal is the HTTP status and
/// body to answer with, counted as refusals of calls are.
pub fn metrics_gate(
    credentials: Option<&Credentials>,
    headers: &http::HeaderMap,
    peer: Option<&Peer>,
) -> Result<(), (http::StatusCode, &'static str)> {
    let Some(credentials) = credentials else {
        return Ok(());
    };
    match check(credentials, headers, peer, Role::Observe) {
        Ok(_) => Ok(()),
        Err(Refusal::Unauthenticated) => {
            count("/metrics", Role::Observe.as_str(), "unauthenticated");
            Err((
                http::StatusCode::UNAUTHORIZED,
                "a bearer token (or client certificate) of a client with the observe role is required\n",
            ))
        }
        Err(Refusal::Denied(name)) => {
            count("/metrics", Role::Observe.as_str(), "permission_denied");
            tracing::warn!(
                client = &*name,
                "scrape refused: the client lacks the observe role"
            );
            Err((
                http::StatusCode::FORBIDDEN,
                "this client lacks the observe role\n",
            ))
        }
    }
}

fn count(method: &'static str, role: &'static str, code: &'static str) {
    // Methods come from the descriptor table: a bounded set.
    metrics::counter!(
        telemetry::AUTH_REFUSALS,
        "method" => method,
        "role" => role,
        "code" => code
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn credentials() -> Credentials {
        let text = format!(
            "[[clients]]\nname = \"ivr\"\ncertificate = \"ivr.example\"\nroles = [\"route\"]\n\n[[clients]]\nname = \"cti\"\ntoken_sha256 = \"{}\"\nroles = [\"cti\"]\n",
            hex::encode(sha2::Sha256::digest(b"cti-token"))
        );
        Credentials::parse("creds.toml", &text).unwrap()
    }

    fn peer(names: &[&str]) -> Peer {
        Peer {
            remote: None,
            certificate: Some(names.iter().map(|n| Box::<str>::from(*n)).collect()),
        }
    }

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = authorization {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    fn who(
        authorization: Option<&str>,
        peer: Option<&Peer>,
        role: Role,
    ) -> Result<String, Refusal> {
        let c = credentials();
        check(&c, &headers(authorization), peer, role).map(|c| c.name.to_string())
    }

    #[test]
    fn a_token_decides_when_sent_and_the_certificate_otherwise() {
        let ivr = peer(&["ivr.example"]);
        // The certificate alone names the IVR.
        assert_eq!(who(None, Some(&ivr), Role::Route), Ok("ivr".into()));
        // A token, when sent, decides: the CTI's token on the IVR's
        // connection is the CTI, with the CTI's roles only.
        assert_eq!(
            who(Some("Bearer cti-token"), Some(&ivr), Role::Cti),
            Ok("cti".into())
        );
        assert_eq!(
            who(Some("Bearer cti-token"), Some(&ivr), Role::Route),
            Err(Refusal::Denied("cti".into()))
        );
        // An unknown or malformed token is not made good by the certificate.
        for bad in ["Bearer guess", "Basic aXZy", "Bearer ", "cti-token"] {
            assert_eq!(
                who(Some(bad), Some(&ivr), Role::Route),
                Err(Refusal::Unauthenticated),
                "{bad}"
            );
        }
        // Two tokens, a good one either first or second: nobody.
        for pair in [
            ["Bearer cti-token", "Bearer guess"],
            ["Bearer guess", "Bearer cti-token"],
        ] {
            let mut h = http::HeaderMap::new();
            for a in pair {
                h.append(http::header::AUTHORIZATION, a.parse().unwrap());
            }
            let c = credentials();
            assert_eq!(
                check(&c, &h, Some(&ivr), Role::Cti).map(|c| c.name.to_string()),
                Err(Refusal::Unauthenticated),
                "{pair:?}"
            );
        }
        // No token and no certificate, or one no client is known by.
        assert_eq!(who(None, None, Role::Route), Err(Refusal::Unauthenticated));
        assert_eq!(
            who(None, Some(&peer(&["stranger.example"])), Role::Route),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            who(None, Some(&Peer::default()), Role::Route),
            Err(Refusal::Unauthenticated)
        );
    }
}
