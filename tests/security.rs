//! Only who should: with a credentials file, every RPC of the routing
//! service answers only a client whose role includes it (a table over every
//! RPC from the descriptor and every role), a call without a token or with
//! an unknown one is UNAUTHENTICATED, health and reflection stay open, and
//! /metrics needs the observe role.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use careroute::auth::{ROUTING_SERVICE, Role, role_of};
use careroute::grpc::methods;
use common::*;
use sha2::Digest;
use tonic::{Code, transport::Channel};

/// The token of the client with `role` alone.
fn token(role: Role) -> String {
    format!("token-of-{}", role.as_str())
}

/// A credentials file with one client per role.
fn credentials() -> process::ScratchFile {
    let mut text = String::new();
    for role in Role::ALL {
        text += &format!(
            "[[clients]]\nname = \"{}-client\"\ntoken_sha256 = \"{}\"\nroles = [\"{}\"]\n\n",
            role.as_str(),
            hex::encode(sha2::Sha256::digest(token(role).as_bytes())),
            role.as_str()
        );
    }
    process::scratch_file("credentials", "credentials.toml", &text)
}

/// Calls `/service/method` with an empty message (and `token`, if any),
/// whatever the method's shapes: the code it got before any answer, or
/// None if the call was let in (an answer or a stream began, or the handler
/// refused the empty request).
async fn call(channel: &Channel, path: &str, token: Option<&str>) -> Code {
    call_with(channel, path, token.map(|t| format!("Bearer {t}"))).await
}

/// [`call`] with the `authorization` header as given.
async fn call_with(channel: &Channel, path: &str, authorization: Option<String>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::once(()));
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc.streaming(request, path.parse().unwrap(), codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn each_role_calls_exactly_its_rpcs() {
    let path = credentials();
    let s =
        TestServer::start_with(monday_10am(), |c| c.credentials = Some(path.to_path_buf())).await;
    let rpcs: Vec<_> = methods::all()
        .iter()
        .filter(|m| m.service == ROUTING_SERVICE)
        .collect();
    assert!(rpcs.len() >= 14);
    for m in rpcs {
        let path = format!("/{ROUTING_SERVICE}/{}", m.name);
        let needed = role_of(&m.name).expect("every RPC has a role");
        for role in Role::ALL {
            let code = call(&s.channel, &path, Some(&token(role))).await;
            if role == needed {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{} refused to the {} role: {code:?}",
                    m.name,
                    role.as_str()
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{} with the {} role",
                    m.name,
                    role.as_str()
                );
            }
        }
        assert_eq!(
            call(&s.channel, &path, None).await,
            Code::Unauthenticated,
            "{}",
            m.name
        );
        assert_eq!(
            call(&s.channel, &path, Some("not-a-token")).await,
            Code::Unauthenticated,
            "{}",
            m.name
        );
    }
    // A path no RPC has: a caller no client of the file is hears
    // UNAUTHENTICATED, a known client PERMISSION_DENIED, as for any call.
    let nowhere = format!("/{ROUTING_SERVICE}/NoSuchRpc");
    assert_eq!(
        call(&s.channel, &nowhere, None).await,
        Code::Unauthenticated
    );
    assert_eq!(
        call(&s.channel, &nowhere, Some(&token(Role::Admin))).await,
        Code::PermissionDenied
    );
    // Health and reflection stay open.
    assert_eq!(
        health_status(s.channel.clone(), "").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        call(
            &s.channel,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            None
        )
        .await,
        Code::Ok
    );
    // Refusals are counted by method, role and code; never by client.
    let scrape = http_get_with(
        &s.metrics.to_string(),
        "/metrics",
        Some(&token(Role::Observe)),
    )
    .await;
    assert!(
        scrape.contains(
            r#"careroute_auth_refusals_total{method="RouteContact",role="route",code="permission_denied"} 3"#
        ),
        "{scrape}"
    );
    assert!(!scrape.contains("-client"), "a client's name in a metric");
    s.stop().await;
}

#[tokio::test]
async fn metrics_need_the_observe_role() {
    let path = credentials();
    let s =
        TestServer::start_with(monday_10am(), |c| c.credentials = Some(path.to_path_buf())).await;
    let metrics = s.metrics.to_string();
    let status = |r: &str| r.lines().next().unwrap_or_default().to_owned();
    assert!(status(&http_get_with(&metrics, "/metrics", None).await).contains("401"));
    assert!(
        status(&http_get_with(&metrics, "/metrics", Some(&token(Role::Cti))).await).contains("403")
    );
    assert!(
        status(&http_get_with(&metrics, "/metrics", Some(&token(Role::Observe))).await)
            .contains("200")
    );
    // Probes stay open.
    assert!(status(&http_get(&metrics, "/readyz").await).contains("200"));
    s.stop().await;
}

#[test]
fn a_bad_credentials_file_is_refused_at_start_with_file_line_and_field() {
    let dir = process::fresh_data_dir();
    let path = dir.join("credentials.toml");
    std::fs::write(
        &path,
        "[[clients]]\nname = \"ivr\"\ntoken = \"hunter2\"\nroles = [\"route\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_careroute"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-journal",
        ])
        .arg("--credentials")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3: clients.token: a plaintext token",
            path.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the token was echoed: {stderr}"
    );
}

#[tokio::test]
async fn paths_no_table_knows_are_refused_and_the_scheme_is_case_blind() {
    let path = credentials();
    let s =
        TestServer::start_with(monday_10am(), |c| c.credentials = Some(path.to_path_buf())).await;
    let admin = Some(token(Role::Admin));
    // Fail closed: whatever a path names, without a role it is refused,
    // even to a client with a good token.
    for path in [
        "/careroute.v1.RoutingService/removeagent",
        "/careroute.v1.RoutingService/RemoveAgent/",
        "/careroute.v1.RoutingService/Nope",
        "/careroute.v1.OtherService/RemoveAgent",
        "/careroute.v1.RoutingService",
    ] {
        assert_eq!(
            call(&s.channel, path, admin.as_deref()).await,
            Code::PermissionDenied,
            "{path}"
        );
    }
    let remove = "/careroute.v1.RoutingService/RemoveAgent";
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let code = call_with(
            &s.channel,
            remove,
            Some(format!("{scheme} {}", token(Role::Admin))),
        )
        .await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{scheme}: {code:?}"
        );
    }
    for value in [
        token(Role::Admin),
        format!("Basic {}", token(Role::Admin)),
        "Bearer ".into(),
    ] {
        assert_eq!(
            call_with(&s.channel, remove, Some(value.clone())).await,
            Code::Unauthenticated,
            "{value}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn the_journal_records_which_client_made_each_change() {
    let data = process::fresh_data_dir();
    let creds = credentials();
    let p = process::Process::start_in(&data, &["--credentials", creds.to_str().unwrap()], "info");
    let channel = Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        careroute::grpc::pb::routing_service_client::RoutingServiceClient::new(channel);
    let request = with_token(contact("c-audit", "billing"), &token(Role::Route));
    client.route_contact(request).await.unwrap();
    drop(p);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_careroute"))
        .arg("journal")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let routed = lines
        .iter()
        .find(|l| l["command"]["route"]["contact_id"] == "c-audit")
        .expect("the route is in the journal");
    assert_eq!(routed["by"], "route-client", "{routed}");
    // What the service did by itself (its start) names no client; tokens
    // appear nowhere.
    assert!(lines[0].get("by").is_none(), "{}", lines[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&token(Role::Route)));
}

/// A call's message with `token` as its bearer token.
fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn withdrawn_credentials_end_the_streams_they_opened() {
    use careroute::grpc::pb;
    use tokio_stream::StreamExt;
    let creds = credentials();
    let text = std::fs::read_to_string(&*creds).unwrap();
    let p = process::Process::start(&["--credentials", creds.to_str().unwrap()]);
    let channel = Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::routing_service_client::RoutingServiceClient::new(channel);
    let cti = token(Role::Cti);
    let agent = "agent-frontline-2";
    let state = |state: pb::AgentState| pb::StreamAgentStatesRequest {
        agent_id: agent.into(),
        state: state.into(),
    };
    let mut observer = client.clone();
    let mut state_now = async move || {
        let request = pb::GetAgentRequest {
            agent_id: agent.into(),
        };
        let view = observer
            .get_agent(with_token(request, &token(Role::Observe)))
            .await
            .unwrap();
        view.into_inner().agent.unwrap().state()
    };

    // The CTI's three streams, opened while its client is in the file.
    let (feed, entries) = tokio::sync::mpsc::channel(4);
    let mut cti_client = client.clone();
    let request = with_token(tokio_stream::wrappers::ReceiverStream::new(entries), &cti);
    let feeding = tokio::spawn(async move { cti_client.stream_agent_states(request).await });
    let mut events = client
        .watch_events(with_token(pb::WatchEventsRequest::default(), &cti))
        .await
        .unwrap()
        .into_inner();
    let quiet = pb::WatchAssignmentsRequest {
        queue_ids: vec!["pharmacy".into()],
        ..Default::default()
    };
    let mut assignments = client
        .watch_assignments(with_token(quiet, &cti))
        .await
        .unwrap()
        .into_inner();
    feed.send(state(pb::AgentState::Away)).await.unwrap();
    let started = std::time::Instant::now();
    while state_now().await != pb::AgentState::Away {
        assert!(started.elapsed().as_secs() < 10, "the feed's entry applied");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The CTI's client leaves the file.
    let cti_entry = text
        .split("[[clients]]")
        .find(|c| c.contains("\"cti-client\""))
        .unwrap();
    std::fs::write(
        &*creds,
        text.replace(&format!("[[clients]]{cti_entry}"), ""),
    )
    .unwrap();
    p.wait_for_log(
        "credentials file changed: reloaded",
        std::time::Duration::from_secs(10),
    );

    // Its next state change is refused, naming the entry; the one before it
    // stays applied and this one is not.
    feed.send(state(pb::AgentState::Offline)).await.unwrap();
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), feeding)
        .await
        .expect("the feed is refused, not left open")
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().starts_with("entry 1: "), "{refused:?}");
    assert_eq!(state_now().await, pb::AgentState::Away);

    // A decision made now does not reach its event watch: the watch ends
    // with the refusal instead (or had already ended, being quiet).
    let mut router = client.clone();
    router
        .route_contact(with_token(
            contact("c-after", "billing"),
            &token(Role::Route),
        ))
        .await
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.next().await {
                Some(Ok(event)) => assert!(
                    !format!("{event:?}").contains("c-after"),
                    "an event sent after the credentials were withdrawn: {event:?}"
                ),
                Some(Err(status)) => break status,
                None => panic!("the watch ended without its refusal"),
            }
        }
    })
    .await
    .expect("the event watch ends");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(events.next().await.is_none(), "nothing after the refusal");

    // A watch with nothing to send ends too, within the files' recheck.
    let quiet_end = tokio::time::timeout(std::time::Duration::from_secs(10), assignments.next())
        .await
        .expect("the quiet watch ends");
    assert_eq!(
        quiet_end.unwrap().unwrap_err().code(),
        Code::Unauthenticated
    );
    // New calls with the token are refused as before.
    let again = client
        .watch_events(with_token(pb::WatchEventsRequest::default(), &cti))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
    // Refusals mid-stream are counted as refusals of calls are.
    let scrape = http_get_with(&p.metrics, "/metrics", Some(&token(Role::Observe))).await;
    // Once for each stream, and once for the new call.
    for (method, refused) in [
        ("StreamAgentStates", 1.0),
        ("WatchEvents", 2.0),
        ("WatchAssignments", 1.0),
    ] {
        let method = format!("method=\"{method}\"");
        let series = [
            "careroute_auth_refusals_total",
            &method,
            "code=\"unauthenticated\"",
        ];
        assert_eq!(sample(&scrape, &series), refused, "{method}: {scrape}");
    }
}
