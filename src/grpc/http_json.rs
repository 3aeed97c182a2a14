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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{Value, json};
use tonic::{Code, Status, body::Body};
use tonic_types::StatusExt;
use tower_layer::Layer;
use tower_service::Service;

use super::status::{Reason, Violation, refusal};
use crate::telemetry;

/// The largest JSON body read: as for a binary request.
pub const MAX_JSON_BYTES: usize = super::service::MAX_MESSAGE_BYTES;

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
    /// The gRPC path, e.g. `/careroute.v1.RoutingService/RouteContact`.
    pub grpc_path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
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
                let route = Route {
                    path: path.clone(),
                    grpc_path: format!("/{}/{}", service.full_name(), method.name()),
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
    type Future = BoxFuture<Answer<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_grpc(&request) {
            let call = self.inner.call(request);
            return Box::pin(async move { Ok(call.await?.map(Either::Left)) });
        }
        // The service made ready by poll_ready goes with this call.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let routes = self.routes.clone();
        Box::pin(async move { transcode(inner, &routes, request).await })
    }
}

/// Whether the request is gRPC (any `application/grpc` content type).
fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A JSON request refused before it became a call.
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
}

/// Serves one JSON request: checks and converts it, calls the method, and
/// converts its answer.
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
    let (route, call) = match to_call(routes, request).await {
        Ok(prepared) => prepared,
        Err(refused) => {
            let mut answer = error_answer(refused.http, &refused.status);
            if refused.http == StatusCode::METHOD_NOT_ALLOWED {
                answer
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            return Ok(answer.map(Either::Right));
        }
    };
    let answer = inner.call(call).await?;
    Ok(from_answer(route, answer).await.map(Either::Right))
}

/// The gRPC call a JSON request asks for, with its route.
async fn to_call(
    routes: &Routes,
    request: http::Request<Body>,
) -> Result<(&Route, http::Request<Body>), Refused> {
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
    let body = match Limited::new(body, MAX_JSON_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(Refused::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                Reason::RequestTooLarge,
                format!("the request is larger than careroute reads ({MAX_JSON_BYTES} bytes)"),
            ));
        }
        Err(_) => {
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                Code::Cancelled,
                Reason::MalformedBody,
                "the request body could not be read",
            ));
        }
    };
    let message = from_json(&route.input, &body).map_err(|fault| {
        let message = match &fault.field {
            Some(field) => format!("{field}: {}", fault.why),
            None => format!(
                "the body is not this method's request in JSON: {}",
                fault.why
            ),
        };
        let violations = fault
            .field
            .map(|field| Violation {
                field,
                description: fault.why,
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
    })?;
    let encoded = message.encode_to_vec();
    let Ok(length) = u32::try_from(encoded.len()) else {
        return Err(Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            Reason::RequestTooLarge,
            format!("the request is larger than careroute reads ({MAX_JSON_BYTES} bytes)"),
        ));
    };
    let mut framed = BytesMut::with_capacity(5 + encoded.len());
    framed.put_u8(0);
    framed.put_u32(length);
    framed.extend_from_slice(&encoded);

    parts.uri = http::Uri::from_maybe_shared(route.grpc_path.clone()).map_err(|_| {
        Refused::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            Reason::InternalError,
            "the route's gRPC path is not a URI",
        )
    })?;
    let headers = &mut parts.headers;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove("grpc-encoding");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let call = http::Request::from_parts(parts, Body::new(Full::new(framed.freeze())));
    Ok((route, call))
}

/// Why a JSON body is not the method's request.
#[derive(Debug)]
struct JsonFault {
    /// The JSON path of the field at fault (`attributes.age`), when the
    /// body reached one.
    field: Option<String>,
    /// What is wrong there, and where in the body; never a value sent.
    why: String,
}

/// The request message in `body`, an empty body being the empty message.
fn from_json(input: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, JsonFault> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let mut reader = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let parsed = DynamicMessage::deserialize(
        input.clone(),
        serde_path_to_error::Deserializer::new(&mut reader, &mut track),
    )
    .and_then(|message| reader.end().map(|()| message));
    parsed.map_err(|e| {
        let path = track.path().to_string();
        JsonFault {
            field: (path != ".").then_some(path),
            why: without_values(&e.to_string()),
        }
    })
}

/// `reason` with every quoted value before its "expected" left out: serde
/// quotes the value it could not take there (and a value may be patient
/// data), then says what it expected (the proto's names and types, kept).
fn without_values(reason: &str) -> String {
    let (said, expected) = match reason.find("expected") {
        Some(at) => reason.split_at(at),
        None => (reason, ""),
    };
    let mut out = String::with_capacity(reason.len());
    let mut open: Option<char> = None;
    for c in said.chars() {
        match open {
            None if matches!(c, '"' | '\'' | '`') => {
                open = Some(c);
                out.push(c);
                out.push('…');
            }
            None => out.push(c),
            Some(quote) if c == quote => {
                open = None;
                out.push(c);
            }
            Some(_) => {}
        }
    }
    out.push_str(expected);
    out
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
            "status": code_name(status.code()),
            "message": status.message(),
            "details": listed,
        }
    });
    json_answer(http, Bytes::from(body.to_string()))
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

/// The name of a gRPC code as in `google.rpc.Code`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::methods;

    #[test]
    fn every_unary_routing_rpc_is_bound_once_and_nothing_else() {
        let routes = Routes::from_descriptor(crate::grpc::FILE_DESCRIPTOR_SET).unwrap();
        let mut bound: Vec<&str> = routes.all().map(|r| r.grpc_path.as_str()).collect();
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
            && r.grpc_path == "/careroute.v1.RoutingService/RouteContact"));
    }

    #[test]
    fn the_readme_lists_every_route() {
        let readme = include_str!("../../README.md");
        let routes = Routes::from_descriptor(crate::grpc::FILE_DESCRIPTOR_SET).unwrap();
        for route in routes.all() {
            let method = route.grpc_path.rsplit('/').next().unwrap();
            let row = format!("| `POST {}` | {method} |", route.path);
            assert!(readme.contains(&row), "the README lacks the row {row}");
        }
    }

    #[test]
    fn json_errors_never_repeat_a_value() {
        let routes = Routes::from_descriptor(crate::grpc::FILE_DESCRIPTOR_SET).unwrap();
        let route = &routes.by_path["/v1/contacts:route"];
        for (body, value, field) in [
            (r#"{"contactId": 12345678}"#, "12345678", "contactId"),
            (r#"{"channel": "Jane Doe"}"#, "Jane", "channel"),
            (r#"{"attributes": {"age": 71}}"#, "71", "attributes.age"),
            (r#"{"intent": true}"#, "true", "intent"),
        ] {
            let fault = from_json(&route.input, body.as_bytes()).unwrap_err();
            assert!(!fault.why.contains(value), "{body}: {fault:?}");
            assert_eq!(fault.field.as_deref(), Some(field), "{body}: {fault:?}");
        }
        let why = from_json(&route.input, br#"{"noSuchField": 1}"#)
            .unwrap_err()
            .why;
        assert!(why.starts_with("unrecognized field name"), "{why}");
        assert!(!why.contains("noSuchField"), "{why}");
        assert!(from_json(&route.input, b"  ").is_ok());
        assert!(from_json(&route.input, b"{} trailing").is_err());
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
