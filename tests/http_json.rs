//! HTTP/JSON on the gRPC port, against the real binary: a chatbot's handoff
//! over HTTP/1.1 (route, confirm, status), the same call over HTTP/2 beside
//! gRPC, every kind of bad input with its HTTP code, reason and field, the
//! roles of the credentials file, and the metrics of both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{
    floor::{self, KNOBS},
    process::{Process, scratch_dir},
};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_service::Service;

const ADMIN: &str = "token-of-admin";
const OBSERVER: &str = "token-of-observer";

/// The binary on the floor's policy (open round the clock), with an
/// operator's client (every role) and an observer's, by their tokens.
fn start(name: &str) -> Process {
    let dir = scratch_dir(&format!("http-{name}"));
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, floor::policy(&KNOBS)).unwrap();
    let credentials: PathBuf = dir.join("credentials.toml");
    let sha = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    std::fs::write(
        &credentials,
        format!(
            "[[clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nroles = [\"route\", \"cti\", \"observe\", \"admin\"]\n\n\
             [[clients]]\nname = \"wallboard\"\ntoken_sha256 = \"{}\"\nroles = [\"observe\"]\n",
            sha(ADMIN),
            sha(OBSERVER)
        ),
    )
    .unwrap();
    Process::start(&[
        "--policy",
        policy.to_str().unwrap(),
        "--credentials",
        credentials.to_str().unwrap(),
    ])
    .keeping(dir)
}

/// An answer: HTTP code, headers (lowercase names) and body.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error's reason (ErrorInfo) and fields (BadRequest).
    fn refusal(&self) -> (String, Vec<String>) {
        let error = &self.json()["error"];
        assert_eq!(
            error["code"].as_u64(),
            Some(u64::from(self.code)),
            "{}",
            self.body
        );
        let mut reason = String::new();
        let mut fields = Vec::new();
        for detail in error["details"].as_array().unwrap() {
            match detail["@type"].as_str().unwrap() {
                "type.googleapis.com/google.rpc.ErrorInfo" => {
                    assert_eq!(detail["domain"], "careroute");
                    reason = detail["reason"].as_str().unwrap().to_owned();
                }
                "type.googleapis.com/google.rpc.BadRequest" => {
                    for v in detail["fieldViolations"].as_array().unwrap() {
                        fields.push(v["field"].as_str().unwrap().to_owned());
                    }
                }
                other => panic!("unexpected detail {other}"),
            }
        }
        (reason, fields)
    }
}

/// One HTTP/1.1 request on a connection of its own.
async fn http1(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    token: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: careroute\r\nConnection: close\r\n");
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let code = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        code,
        headers,
        body: body.to_owned(),
    }
}

/// POSTs `body` as JSON with the admin's token.
async fn post(p: &Process, path: &str, body: Value) -> Answer {
    http1(
        &p.grpc,
        "POST",
        path,
        Some("application/json"),
        Some(ADMIN),
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_chatbot_hands_off_routes_confirms_and_reads_status_over_http1() {
    let p = start("handoff");
    let agent = post(
        &p,
        "/v1/agents:upsert",
        json!({
            "agentId": "chat-agent-1",
            "team": "Access",
            "transferAddress": "chat:queue/1",
            "skills": [{"skill": "scheduling", "proficiency": 3}],
            "languages": ["en"],
            "channels": [{"channel": "CHANNEL_VOICE", "capacity": 1}],
        }),
    )
    .await;
    assert_eq!(agent.code, 200, "{}", agent.body);
    // The proto's own (snake_case) field names are accepted too.
    let state = post(
        &p,
        "/v1/agents:setState",
        json!({"agent_id": "chat-agent-1", "state": "AGENT_STATE_AVAILABLE"}),
    )
    .await;
    assert_eq!(state.code, 200, "{}", state.body);

    let routed = post(
        &p,
        "/v1/contacts:route",
        json!({
            "contactId": "chat-1",
            "channel": "CHANNEL_VOICE",
            "intent": "scheduling",
            "identity": "IDENTITY_VERIFIED",
            "requestId": "chat-1-handoff",
        }),
    )
    .await;
    assert_eq!(routed.code, 200, "{}", routed.body);
    assert_eq!(routed.header("content-type"), Some("application/json"));
    let decision = routed.json();
    assert_eq!(decision["ruleId"], "scheduling", "{decision}");
    assert_eq!(decision["agent"]["agentId"], "chat-agent-1", "{decision}");
    assert_eq!(decision["agent"]["transferAddress"], "chat:queue/1");
    let reservation = decision["agent"]["reservationId"]
        .as_str()
        .unwrap()
        .to_owned();
    // RFC 3339, as the canonical mapping writes a Timestamp.
    assert!(
        chrono::DateTime::parse_from_rfc3339(
            decision["agent"]["reservationExpiresAt"].as_str().unwrap()
        )
        .is_ok()
    );
    // A retry with the same request id gets the same decision.
    let again = post(
        &p,
        "/v1/contacts:route",
        json!({
            "contactId": "chat-1",
            "channel": "CHANNEL_VOICE",
            "intent": "scheduling",
            "identity": "IDENTITY_VERIFIED",
            "requestId": "chat-1-handoff",
        }),
    )
    .await;
    assert_eq!(again.json()["decisionId"], decision["decisionId"]);

    let confirmed = post(
        &p,
        "/v1/reservations:confirm",
        json!({"reservationId": reservation, "requestId": "chat-1-confirm"}),
    )
    .await;
    assert_eq!(confirmed.code, 200, "{}", confirmed.body);
    // Confirming again without a request id: the refusal says it is done.
    let twice = post(
        &p,
        "/v1/reservations:confirm",
        json!({"reservationId": reservation}),
    )
    .await;
    assert_eq!(twice.code, 400, "{}", twice.body);
    assert_eq!(twice.json()["error"]["status"], "FAILED_PRECONDITION");
    assert_eq!(twice.refusal().0, "RESERVATION_ALREADY_CONFIRMED");

    let seen = post(&p, "/v1/agents:get", json!({"agentId": "chat-agent-1"})).await;
    assert_eq!(seen.code, 200, "{}", seen.body);
    assert_eq!(
        seen.json()["agent"]["state"],
        "AGENT_STATE_AVAILABLE",
        "{}",
        seen.body
    );
    let status = post(&p, "/v1/contacts:status", json!({"contactId": "chat-1"})).await;
    assert_eq!(status.code, 200, "{}", status.body);
    // An empty body is the empty request.
    let queues = http1(
        &p.grpc,
        "POST",
        "/v1/queues:list",
        Some("application/json"),
        Some(ADMIN),
        b"",
    )
    .await;
    assert_eq!(queues.code, 200, "{}", queues.body);
    assert!(queues.json()["queues"].as_array().unwrap().len() >= 2);

    // The calls count as their RPCs, with the same labels as over gRPC.
    let scrape = common::http_get_with(&p.metrics, "/metrics", Some(ADMIN)).await;
    let routes = scrape
        .lines()
        .find(|l| {
            l.starts_with("careroute_rpc_requests_total")
                && l.contains("method=\"RouteContact\"")
                && l.contains("code=\"OK\"")
        })
        .unwrap_or_else(|| panic!("no RouteContact count in\n{scrape}"));
    assert!(routes.ends_with(" 2"), "{routes}");
}

#[tokio::test]
async fn http2_json_and_grpc_share_the_port() {
    let p = start("h2");
    // gRPC on the port as ever.
    let mut grpc = floor::client(&p).await;
    let queues = grpc
        .list_queues(tonic::Request::new(Default::default()))
        .await;
    // No token: refused, but by careroute, over gRPC.
    assert_eq!(queues.unwrap_err().code(), tonic::Code::Unauthenticated);

    // HTTP/2 (h2c) JSON on a tonic channel to the same port.
    let mut channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v1/queues:list", p.grpc))
        .header("content-type", "application/json; charset=utf-8")
        .header("authorization", format!("Bearer {OBSERVER}"))
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from_static(b"{}"),
        )))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let answer = channel.call(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), http::Version::HTTP_2);
    use http_body_util::BodyExt;
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let queues: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(queues["queues"][0]["queueId"], "billing", "{queues}");
}

#[tokio::test]
async fn bad_input_gets_its_http_code_reason_and_field() {
    let p = start("bad");
    // A field the engine's checks refuse: every violation, by proto name.
    let a = post(
        &p,
        "/v1/contacts:route",
        json!({"contactId": "", "intent": "billing", "language": "x".repeat(100)}),
    )
    .await;
    assert_eq!(a.code, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["status"], "INVALID_ARGUMENT");
    let (reason, fields) = a.refusal();
    assert_eq!(reason, "INVALID_FIELD", "{}", a.body);
    assert_eq!(fields, ["contact_id", "channel", "language"], "{}", a.body);
    // A value the policy does not know: its own reason, the field named,
    // the value not repeated.
    let a = post(
        &p,
        "/v1/contacts:route",
        json!({"contactId": "c-0", "channel": "CHANNEL_VOICE", "intent": "dentistry"}),
    )
    .await;
    assert_eq!(
        a.refusal(),
        ("UNKNOWN_INTENT".to_owned(), vec!["intent".to_owned()])
    );
    assert!(!a.body.contains("dentistry"), "{}", a.body);

    // A value that is not the field's type: the JSON path is named, the
    // value is not repeated.
    let a = post(
        &p,
        "/v1/contacts:route",
        json!({"contactId": "c-1", "channel": "CHANNEL_VOICE", "intent": "billing",
               "attributes": {"member_id": 4125550123_u64}}),
    )
    .await;
    assert_eq!(a.code, 400, "{}", a.body);
    // The map key is the client's: only the field is named.
    assert_eq!(
        a.refusal(),
        ("MALFORMED_BODY".to_owned(), vec!["attributes".to_owned()])
    );
    assert!(!a.body.contains("4125550123"), "{}", a.body);
    let a = post(
        &p,
        "/v1/contacts:route",
        json!({"contactId": "c-1", "channel": "Jane Doe", "intent": "billing"}),
    )
    .await;
    assert_eq!(
        a.refusal(),
        ("MALFORMED_BODY".to_owned(), vec!["channel".to_owned()])
    );
    assert!(!a.body.contains("Jane"), "{}", a.body);
    // Not JSON at all.
    let a = http1(
        &p.grpc,
        "POST",
        "/v1/contacts:route",
        Some("application/json"),
        Some(ADMIN),
        b"{contact",
    )
    .await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (400, "MALFORMED_BODY"),
        "{}",
        a.body
    );

    // Unknown things: agent (404 from the engine), path, method, media type.
    let a = post(&p, "/v1/agents:get", json!({"agentId": "nobody"})).await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (404, "UNKNOWN_AGENT"),
        "{}",
        a.body
    );
    let a = post(&p, "/v1/contacts:teleport", json!({})).await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (404, "UNKNOWN_ROUTE"),
        "{}",
        a.body
    );
    let a = http1(&p.grpc, "GET", "/v1/queues:list", None, Some(ADMIN), b"").await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (405, "UNKNOWN_ROUTE"),
        "{}",
        a.body
    );
    assert_eq!(a.header("allow"), Some("POST"));
    let a = http1(
        &p.grpc,
        "POST",
        "/v1/queues:list",
        Some("text/plain"),
        Some(ADMIN),
        b"{}",
    )
    .await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (415, "NOT_JSON"),
        "{}",
        a.body
    );

    // Too large: 413 stating the limit.
    let huge = format!("{{\"contactId\": \"{}\"}}", "x".repeat(600 * 1024));
    let a = http1(
        &p.grpc,
        "POST",
        "/v1/contacts:route",
        Some("application/json"),
        Some(ADMIN),
        huge.as_bytes(),
    )
    .await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (413, "REQUEST_TOO_LARGE"),
        "{}",
        a.body
    );
    // Large but under the limit: the field check names the field.
    let long =
        json!({"contactId": "c-2", "channel": "CHANNEL_VOICE", "intent": "x".repeat(64 * 1024)});
    let a = post(&p, "/v1/contacts:route", long).await;
    assert_eq!(a.code, 400, "{}", &a.body[..200.min(a.body.len())]);
    assert_eq!(a.refusal().1, vec!["intent".to_owned()]);

    // Roles: no token, then a role that may not route.
    let a = http1(
        &p.grpc,
        "POST",
        "/v1/queues:list",
        Some("application/json"),
        None,
        b"{}",
    )
    .await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (401, "UNAUTHENTICATED"),
        "{}",
        a.body
    );
    let a = http1(
        &p.grpc,
        "POST",
        "/v1/contacts:route",
        Some("application/json"),
        Some(OBSERVER),
        json!({"contactId": "c-3", "channel": "CHANNEL_VOICE", "intent": "billing"})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (403, "ROLE_REQUIRED"),
        "{}",
        a.body
    );

    // The refusals made before any RPC are counted by reason.
    let scrape = common::http_get_with(&p.metrics, "/metrics", Some(ADMIN)).await;
    // A body that did not convert counts as the RPC's client fault, never
    // as a server fault or a client gone away.
    // The body over the limit counts as the RPC's RESOURCE_EXHAUSTED, as
    // over gRPC.
    assert!(
        scrape.contains("method=\"RouteContact\",code=\"RESOURCE_EXHAUSTED\"} 1"),
        "{scrape}"
    );
    for code in ["CANCELLED", "UNKNOWN", "INTERNAL"] {
        let series = format!("method=\"RouteContact\",code=\"{code}\"");
        assert!(!scrape.contains(&series), "{series} in\n{scrape}");
    }
    for (reason, n) in [
        ("MALFORMED_BODY", 3),
        ("UNKNOWN_ROUTE", 2),
        ("NOT_JSON", 1),
        ("REQUEST_TOO_LARGE", 1),
    ] {
        let line = format!("careroute_http_json_refused_total{{reason=\"{reason}\"}} {n}");
        assert!(scrape.contains(&line), "no {line} in\n{scrape}");
    }
}

/// Reads one HTTP/1.1 answer with a content length from `s`.
async fn read_answer(s: &mut tokio::net::TcpStream) -> Answer {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-answer");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let mut lines = head.lines();
    let code = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    Answer {
        code,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

#[tokio::test]
async fn one_connection_carries_a_chatbots_calls_and_a_body_is_read_only_once_let_in() {
    let dir = scratch_dir("http-slow");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, floor::policy(&KNOBS)).unwrap();
    let credentials = dir.join("credentials.toml");
    std::fs::write(
        &credentials,
        format!(
            "[[clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nroles = [\"route\", \"observe\"]\n",
            hex::encode(sha2::Sha256::digest(ADMIN.as_bytes()))
        ),
    )
    .unwrap();
    let p = Process::start(&[
        "--policy",
        policy.to_str().unwrap(),
        "--credentials",
        credentials.to_str().unwrap(),
        "--request-timeout",
        "1s",
    ]);

    // Keep-alive: three calls on one connection, as curl and webhook
    // clients make them.
    let mut s = tokio::net::TcpStream::connect(&p.grpc).await.unwrap();
    for (path, body) in [
        ("/v1/queues:list", "{}".to_owned()),
        (
            "/v1/contacts:route",
            json!({"contactId": "c-ka", "channel": "CHANNEL_VOICE", "intent": "billing"})
                .to_string(),
        ),
        (
            "/v1/contacts:status",
            json!({"contactId": "c-ka"}).to_string(),
        ),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: careroute\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {ADMIN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let a = read_answer(&mut s).await;
        assert_eq!(a.code, 200, "{path}: {}", a.body);
    }

    // Without credentials, a body promised and never sent: refused at
    // once, before anything is read.
    let mut s = tokio::net::TcpStream::connect(&p.grpc).await.unwrap();
    s.write_all(
        b"POST /v1/contacts:route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100000\r\n\r\n{\"contactId\"",
    )
    .await
    .unwrap();
    let a = tokio::time::timeout(std::time::Duration::from_secs(5), read_answer(&mut s))
        .await
        .expect("the refusal waited for the body");
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (401, "UNAUTHENTICATED"),
        "{}",
        a.body
    );

    // Let in, a body that trickles is cut at the request deadline (1 s).
    let mut s = tokio::net::TcpStream::connect(&p.grpc).await.unwrap();
    let started = std::time::Instant::now();
    s.write_all(
        format!(
            "POST /v1/contacts:route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {ADMIN}\r\nContent-Length: 100000\r\n\r\n{{\"contactId\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let a = tokio::time::timeout(std::time::Duration::from_secs(10), read_answer(&mut s))
        .await
        .expect("no answer to a trickling body");
    assert_eq!(
        (a.code, a.refusal().0.as_str()),
        (504, "SERVER_DEADLINE"),
        "{}",
        a.body
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}
