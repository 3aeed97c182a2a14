//! HTTP/JSON beside gRPC on the gRPC port, for chatbots and webhooks: a
//! tower layer that turns a JSON request on a path the proto binds with
//! `google.api.http` into the gRPC call of that method, sends it through
//! every other layer (metrics, authorization, admission, deadline) to the
//! same service, and turns the answer back into JSON, or the refusal into an
//! HTTP code with a JSON body that keeps its reason and field violations.
//! The routes and the JSON mapping (proto3's canonical one) are read from
//! the descriptor: nothing here names a message.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use futures_util::TryFutureExt as _;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Either, Full};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Value, json};
use tonic::{Code, Status, body::Body};
use tonic_types::StatusExt;
use tower_layer::Layer;
use tower_service::Service;

use super::json_body::{Fault, FaultSlot, JsonBody, MAX_JSON_BYTES};
use super::status::{Reason, Violation, refusal};
use crate::telemetry;

/// The bindings could not be read from the descriptor, or one asks for more
/// than this gateway does (a build defect, caught by this module's tests).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The embedded descriptor set does not decode.
    #[error("the embedded descriptor set: {0}")]
    Descriptor(#[from] prost_reflect::DescriptorError),
    /// A binding this gateway does not serve.
    #[error("{method}: {why}")]
    Unsupported {
        /// The RPC, e.g. `careroute.v1.RoutingService.RouteContact`.
        method: String,
        /// What is not served.
        why: &'static str,
    },
}

/// One bound RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The HTTP path, e.g. `/v1/contacts:route`.
    pub path: String,
    /// The gRPC call's URI: the method's path.
    grpc_uri: http::Uri,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

impl Route {
    /// The gRPC path, e.g. `/careroute.v1.RoutingService/RouteContact`.
    pub fn grpc_path(&self) -> &str {
        self.grpc_uri.path()
    }

    /// The method's request message.
    pub fn input(&self) -> &MessageDescriptor {
        &self.input
    }
}

/// Every binding of the careroute descriptor, by HTTP path.
#[derive(Debug)]
pub struct Routes {
    by_path: HashMap<String, Route>,
}

impl Routes {
    /// The `google.api.http` bindings of every RPC in `descriptor_set`. Only
    /// `post` with `body: "*"` on unary RPCs is served: a request is one JSON
    /// object, the method's request message.
    pub fn from_descriptor(descriptor_set: &[u8]) -> Result<Routes, RouteError> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let mut by_path = HashMap::new();
        let Some(http) = pool.get_extension_by_name("google.api.http") else {
            return Ok(Routes { by_path });
        };
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let unsupported = |why| RouteError::Unsupported {
                    method: method.full_name().to_owned(),
                    why,
                };
                let rule = options.get_extension(&http);
                let Some(rule) = rule.as_message() else {
                    return Err(unsupported("the binding is not an HttpRule"));
                };
                let text = |name: &str| {
                    rule.get_field_by_name(name)
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                };
                let path = text("post");
                if path.is_empty() || !path.starts_with('/') {
                    return Err(unsupported("only `post` bindings are served"));
                }
                if text("body") != "*" || !text("response_body").is_empty() {
                    return Err(unsupported("only `body: \"*\"` is served"));
                }
                if path.contains('{') {
                    return Err(unsupported("path variables are not served"));
                }
                if method.is_client_streaming() || method.is_server_streaming() {
                    return Err(unsupported("streaming RPCs are served over gRPC only"));
                }
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                let Ok(grpc_uri) = http::Uri::try_from(grpc_path.as_str()) else {
                    return Err(unsupported("its gRPC path is not a URI"));
                };
                let route = Route {
                    path: path.clone(),
                    grpc_uri,
                    input: method.input(),
                    output: method.output(),
                };
                if by_path.insert(path, route).is_some() {
                    return Err(unsupported("its path is bound twice"));
                }
            }
        }
        Ok(Routes { by_path })
    }

    /// Every route, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.by_path.values()
    }
}

/// The layer to add to the tonic server, outside every other layer.
#[derive(Debug, Clone)]
pub struct HttpJsonLayer {
    routes: Arc<Routes>,
}

impl HttpJsonLayer {
    /// The layer serving the bindings of careroute's proto.
    pub fn new() -> Result<HttpJsonLayer, RouteError> {
        Ok(HttpJsonLayer {
            routes: Arc::new(Routes::from_descriptor(super::FILE_DESCRIPTOR_SET)?),
        })
    }
}

impl<S> Layer<S> for HttpJsonLayer {
    type Service = HttpJson<S>;

    fn layer(&self, inner: S) -> HttpJson<S> {
        HttpJson {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service the layer wraps around the server's other layers.
#[derive(Debug, Clone)]
pub struct HttpJson<S> {
    inner: S,
    routes: Arc<Routes>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// A gRPC answer passed through, or a JSON one.
type Answer<B> = http::Response<Either<B, Full<Bytes>>>;

/// A gRPC call's answer, passed through as it is.
fn passed<B>(answer: http::Response<B>) -> Answer<B> {
    answer.map(Either::Left)
}

/// The future of a call: a gRPC call's own (no allocation on that path),
/// or a JSON call's.
type CallFuture<F, B, E> = futures_util::future::Either<
    futures_util::future::MapOk<F, fn(http::Response<B>) -> Answer<B>>,
    BoxFuture<Answer<B>, E>,
>;

impl<S, ResBody> Service<http::Request<Body>> for HttpJson<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: std::fmt::Display,
{
    type Response = Answer<ResBody>;
    type Error = S::Error;
    type Future = CallFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_grpc(&request) {
            let pass: fn(http::Response<ResBody>) -> Answer<ResBody> = passed;
            return futures_util::future::Either::Left(self.inner.call(request).map_ok(pass));
        }
        // The service made ready by poll_ready goes with this call.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let routes = self.routes.clone();
        futures_util::future::Either::Right(Box::pin(async move {
            transcode(inner, &routes, request).await
        }))
    }
}

/// Whether the request is gRPC (any `application/grpc` content type).
fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A JSON request refused by this layer.
#[derive(Debug)]
struct Refused {
    http: StatusCode,
    status: Status,
}

impl Refused {
    fn new(http: StatusCode, code: Code, reason: Reason, message: impl Into<String>) -> Refused {
        Refused::naming(http, code, reason, message, Vec::new())
    }

    /// A refusal with field violations (BadRequest).
    fn naming(
        http: StatusCode,
        code: Code,
        reason: Reason,
        message: impl Into<String>,
        violations: Vec<Violation>,
    ) -> Refused {
        metrics::counter!(telemetry::HTTP_JSON_REFUSED, "reason" => reason.as_str()).increment(1);
        Refused {
            http,
            status: refusal(code, message, reason, violations),
        }
    }

    /// The refusal of a body with `fault`.
    fn body(fault: Fault) -> Refused {
        match fault {
            Fault::TooLarge => Refused::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                Reason::RequestTooLarge,
                format!("the request is larger than careroute reads ({MAX_JSON_BYTES} bytes)"),
            ),
            Fault::Malformed { field, why } => {
                let message = match &field {
                    Some(field) => format!("{field}: {why}"),
                    None => format!("the body is not this method's request in JSON: {why}"),
                };
                let violations = field
                    .map(|field| Violation {
                        field,
                        description: why,
                    })
                    .into_iter()
                    .collect();
                Refused::naming(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    Reason::MalformedBody,
                    message,
                    violations,
                )
            }
        }
    }
}

/// Serves one JSON request: checks it, calls the method with its body
/// converted as the call reads it, and converts the answer.
async fn transcode<S, ResBody>(
    mut inner: S,
    routes: &Routes,
    request: http::Request<Body>,
) -> Result<Answer<ResBody>, S::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes>,
    ResBody::Error: std::fmt::Display,
{
    let fault = FaultSlot::default();
    let (route, call) = match to_call(routes, request, &fault) {
        Ok(prepared) => prepared,
        Err(refused) => return Ok(refused_answer(&refused).map(Either::Right)),
    };
    let answer = inner.call(call).await?;
    // A body that did not convert failed the call: say why.
    if let Some(fault) = fault.lock().take() {
        return Ok(refused_answer(&Refused::body(fault)).map(Either::Right));
    }
    Ok(from_answer(route, answer).await.map(Either::Right))
}

/// The gRPC call a JSON request asks for, with its route; its body is
/// converted when the call reads it, and a fault left in `fault`.
fn to_call<'r>(
    routes: &'r Routes,
    request: http::Request<Body>,
    fault: &FaultSlot,
) -> Result<(&'r Route, http::Request<Body>), Refused> {
    let Some(route) = routes.by_path.get(request.uri().path()) else {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            Reason::UnknownRoute,
            "no method is bound to this path: see the README's HTTP/JSON routes",
        ));
    };
    if request.method() != Method::POST {
        return Err(Refused::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::NotFound,
            Reason::UnknownRoute,
            "this path takes POST only",
        ));
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refused::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            Reason::NotJson,
            "content-type must be application/json",
        ));
    }
    let (mut parts, body) = request.into_parts();
    parts.uri = route.grpc_uri.clone();
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove("grpc-encoding");
    headers.remove("grpc-accept-encoding");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let body = JsonBody::new(body, route.input.clone(), fault.clone());
    Ok((route, http::Request::from_parts(parts, Body::new(body))))
}

/// The JSON answer to a refusal of this layer.
fn refused_answer(refused: &Refused) -> http::Response<Full<Bytes>> {
    let mut answer = error_answer(refused.http, &refused.status);
    if refused.http == StatusCode::METHOD_NOT_ALLOWED {
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    answer
}

/// The JSON answer to the gRPC answer `answer` of `route`.
async fn from_answer<B>(route: &Route, answer: http::Response<B>) -> http::Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = answer.into_parts();
    let internal = |message: String| {
        error_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            &refusal(Code::Internal, message, Reason::InternalError, Vec::new()),
        )
    };
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => return internal(format!("the answer could not be read: {e}")),
    };
    // A refusal before any message comes in the headers alone.
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(&parts.headers));
    let Some(status) = status else {
        return internal("the answer carried no gRPC status".to_owned());
    };
    if status.code() != Code::Ok {
        return error_answer(http_status(status.code()), &status);
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 || data.get_u8() != 0 {
        return internal("the answer is not one uncompressed gRPC message".to_owned());
    }
    let length = data.get_u32() as usize;
    if data.len() != length {
        return internal("the answer is not one gRPC message".to_owned());
    }
    let message = match DynamicMessage::decode(route.output.clone(), data) {
        Ok(message) => message,
        Err(e) => return internal(format!("the answer does not decode: {e}")),
    };
    let mut json = Vec::new();
    let mut writer = serde_json::Serializer::new(&mut json);
    if let Err(e) = message.serialize_with_options(&mut writer, &SerializeOptions::new()) {
        return internal(format!("the answer could not be written as JSON: {e}"));
    }
    json_answer(StatusCode::OK, Bytes::from(json))
}

/// A JSON answer with `http` and `body`.
fn json_answer(http: StatusCode, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut answer = http::Response::new(Full::new(body));
    *answer.status_mut() = http;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// The JSON answer to a refusal: Google's JSON error format, the
/// `google.rpc.Status` in an `error` object with the HTTP code, the gRPC
/// code's name, the message, and the details (ErrorInfo with the reason,
/// BadRequest with the field violations).
fn error_answer(http: StatusCode, status: &Status) -> http::Response<Full<Bytes>> {
    let details = status.get_error_details();
    let mut listed = Vec::new();
    if let Some(info) = details.error_info() {
        listed.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    if let Some(bad) = details.bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        listed.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    let body = json!({
        "error": {
            "code": http.as_u16(),
            "status": super::layer::code_name(status.code() as i32),
            "message": status.message(),
            "details": listed,
        }
    });
    let mut answer = json_answer(http, Bytes::from(body.to_string()));
    if status.code() == Code::Unauthenticated {
        answer
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    answer
}

/// The HTTP code of a gRPC code, as Google's APIs map them.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as Google's APIs answer CANCELLED.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::methods;

    #[test]
    fn every_unary_routing_rpc_is_bound_once_and_nothing_else() {
        let routes = Routes::from_descriptor(crate::grpc::FILE_DESCRIPTOR_SET).unwrap();
        let mut bound: Vec<&str> = routes.all().map(Route::grpc_path).collect();
        bound.sort_unstable();
        let mut unary: Vec<String> = methods::all()
            .iter()
            .filter(|m| m.service == "careroute.v1.RoutingService")
            .filter(|m| !m.client_streaming && !m.server_streaming)
            .map(|m| format!("/{}/{}", m.service, m.name))
            .collect();
        unary.sort_unstable();
        assert_eq!(bound, unary);
        assert!(routes.all().any(|r| r.path == "/v1/contacts:route"
            && r.grpc_path() == "/careroute.v1.RoutingService/RouteContact"));
    }

    #[test]
    fn the_readme_lists_every_route() {
        let readme = include_str!("../../README.md");
        let routes = Routes::from_descriptor(crate::grpc::FILE_DESCRIPTOR_SET).unwrap();
        for route in routes.all() {
            let method = route.grpc_path().rsplit('/').next().unwrap();
            let row = format!("| `POST {}` | {method} |", route.path);
            assert!(readme.contains(&row), "the README lacks the row {row}");
        }
        let rows = readme
            .lines()
            .filter(|l| l.starts_with("| `POST /"))
            .count();
        assert_eq!(
            rows,
            routes.all().count(),
            "the README lists a route careroute lacks"
        );
    }

    #[test]
    fn codes_map_as_google_apis_map_them() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
