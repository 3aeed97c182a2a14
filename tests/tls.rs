//! TLS and mutual TLS with real certificates (rcgen) and real TLS clients
//! (tonic over rustls): plaintext to a TLS port fails; under mutual TLS a
//! client without a certificate, or with one from another CA, is refused
//! at the handshake; a certificate the credentials file names gets exactly
//! its roles; /metrics and the probes speak TLS too; certificates and
//! credentials rotate without a restart; and a start that would expose the
//! service on the network unprotected is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use careroute::{
    clock::ManualClock,
    config::Config,
    grpc::pb::{self, routing_service_client::RoutingServiceClient},
    server::{self, ServerError},
    telemetry,
};
use common::{pki::Ca, *};
use sha2::Digest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// A server over TLS, and where its files are.
struct Tls {
    grpc: SocketAddr,
    metrics: SocketAddr,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Tls {
    async fn start(dir: PathBuf, configure: impl FnOnce(&mut Config)) -> Tls {
        let mut config = Config::ephemeral();
        config.tls_cert = Some(dir.join("server.crt"));
        config.tls_key = Some(dir.join("server.key"));
        configure(&mut config);
        let at = monday_10am();
        let engine = server::build_engine(&config, at).unwrap();
        let listeners = server::Listeners::bind(&config).await.unwrap();
        let (grpc, metrics) = (
            listeners.grpc_addr().unwrap(),
            listeners.metrics_addr().unwrap(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let clock = Arc::new(ManualClock::new(at));
        let handle = tokio::spawn(async move {
            server::run(&config, listeners, engine, clock, async {
                let _ = stopped.await;
            })
            .await
        });
        Tls {
            grpc,
            metrics,
            dir,
            stop: Some(stop),
            handle,
        }
    }

    /// A TLS channel trusting `ca`, presenting `client` (a name of
    /// [`pki::write`]) if given.
    async fn channel(&self, ca: &str, client: Option<&str>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(name) = client {
            let cert = std::fs::read(self.dir.join(format!("{name}.crt"))).unwrap();
            let key = std::fs::read(self.dir.join(format!("{name}.key"))).unwrap();
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://localhost:{}", self.grpc.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap().unwrap();
    }
}

/// The code of a RouteContact on `channel` (Ok if answered), with a bearer
/// token if given.
async fn route(channel: &Channel, token: Option<&str>) -> Code {
    let mut request = tonic::Request::new(contact("c-tls", "clinical"));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match RoutingServiceClient::new(channel.clone())
        .route_contact(request)
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The code of an UpsertAgent refused before it runs, or Ok if let in.
async fn upsert(channel: &Channel, token: Option<&str>) -> Code {
    let mut request = tonic::Request::new(pb::UpsertAgentRequest::default());
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match RoutingServiceClient::new(channel.clone())
        .upsert_agent(request)
        .await
    {
        // The empty request is let in and refused by the handler.
        Ok(_) => Code::Ok,
        Err(s) if s.code() == Code::InvalidArgument => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A GET over TLS trusting `ca` (a client certificate is not presented):
/// the whole response.
async fn https_get(addr: SocketAddr, ca: &str, path: &str, token: Option<&str>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls_pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()).map(Result::unwrap),
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    // rustls reports a peer that closes without close_notify as an error
    // after the data; what was read is the answer.
    let _ = s.read_to_string(&mut out).await;
    out
}

fn sha256(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A credentials file: the IVR known by its certificate (route), the CTI by
/// its token (cti), a monitor by its token (observe).
fn credentials(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("credentials.toml");
    std::fs::write(
        &path,
        format!(
            "[[clients]]\nname = \"ivr\"\ncertificate = \"ivr.clinic.example\"\nroles = [\"route\"]\n\n\
             [[clients]]\nname = \"cti\"\ntoken_sha256 = \"{}\"\nroles = [\"cti\"]\n\n\
             [[clients]]\nname = \"monitor\"\ntoken_sha256 = \"{}\"\nroles = [\"observe\"]\n",
            sha256("cti-token"),
            sha256("monitor-token")
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn mutual_tls_admits_only_certified_clients_each_to_its_roles() {
    let dir = process::fresh_data_dir();
    let (ca, other) = (Ca::new("careroute test CA"), Ca::new("someone else's CA"));
    pki::write(&dir, "server", &ca.server());
    pki::write(&dir, "ivr", &ca.client("ivr.clinic.example"));
    pki::write(&dir, "cti", &ca.client("cti.clinic.example"));
    pki::write(&dir, "forged", &other.client("ivr.clinic.example"));
    std::fs::write(dir.join("clients-ca.crt"), ca.pem()).unwrap();
    let creds = credentials(&dir);
    let server = Tls::start(dir.to_path_buf(), |c| {
        c.tls_client_ca = Some(dir.join("clients-ca.crt"));
        c.credentials = Some(creds);
    })
    .await;

    // The IVR's certificate names it: it may route, and only route.
    let ivr = server.channel(&ca.pem(), Some("ivr")).await.unwrap();
    assert_eq!(route(&ivr, None).await, Code::Ok);
    assert_eq!(upsert(&ivr, None).await, Code::PermissionDenied);
    // A bearer token, when sent, decides: an unknown one is not made good
    // by the certificate.
    assert_eq!(route(&ivr, Some("guess")).await, Code::Unauthenticated);

    // A certificate the CA signed but the credentials file does not name
    // gets nothing by itself; with the CTI's token it is the CTI.
    let cti = server.channel(&ca.pem(), Some("cti")).await.unwrap();
    assert_eq!(route(&cti, None).await, Code::Unauthenticated);
    assert_eq!(upsert(&cti, None).await, Code::Unauthenticated);
    assert_eq!(upsert(&cti, Some("cti-token")).await, Code::Ok);
    assert_eq!(route(&cti, Some("cti-token")).await, Code::PermissionDenied);

    // Health stays open to any certified client.
    assert_eq!(health_status(cti.clone(), "").await, 1);

    // No certificate, or one from another CA with the IVR's name: refused
    // at the handshake, nothing is answered.
    for client in [None, Some("forged")] {
        // Under TLS 1.3 the client may finish its side of the handshake
        // before the server's refusal arrives: the first call then fails.
        if let Ok(channel) = server.channel(&ca.pem(), client).await {
            let mut client_ = RoutingServiceClient::new(channel);
            let status = client_
                .route_contact(contact("c-no-cert", "clinical"))
                .await
                .unwrap_err();
            // The server's refusal, not anything a handler said.
            assert!(
                format!("{status:?}").contains("received fatal alert"),
                "{client:?}: {status:?}"
            );
        }
    }

    // Plaintext to the TLS port: no answer.
    let plain = Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(plain) = plain {
        // With a token that may call it, a plaintext call would be let in.
        assert_ne!(upsert(&plain, Some("cti-token")).await, Code::Ok);
    }

    // The server's certificate is not trusted by a client of another CA.
    assert!(
        match server.channel(&other.pem(), Some("ivr")).await {
            Err(_) => true,
            Ok(channel) => route(&channel, None).await != Code::Ok,
        },
        "a client trusting another CA reached the server"
    );

    // /metrics and the probes speak TLS; probes need no certificate (a
    // kubelet has none), a scrape needs the observe role.
    let ready = https_get(server.metrics, &ca.pem(), "/readyz", None).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let refused = https_get(server.metrics, &ca.pem(), "/metrics", None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let denied = https_get(server.metrics, &ca.pem(), "/metrics", Some("cti-token")).await;
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let scrape = https_get(server.metrics, &ca.pem(), "/metrics", Some("monitor-token")).await;
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let failures = metric(&scrape, telemetry::TLS_HANDSHAKE_FAILURES);
    assert!(failures >= 2.0, "handshake failures counted: {failures}");
    let expiry = metric(&scrape, telemetry::TLS_CERT_EXPIRY);
    assert!(expiry > 1.7e9, "expiry: {expiry}");
    // Plain HTTP to the TLS metrics port gets no scrape.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        http_get_with(
            &server.metrics.to_string(),
            "/metrics",
            Some("monitor-token"),
        ),
    )
    .await;
    assert!(
        !matches!(&plain, Ok(text) if text.contains("careroute_")),
        "{plain:?}"
    );
    server.stop().await;
}

/// The value of a series (a name, with its labels if it has any) in a
/// scrape; 0 if it is not there.
fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Polls `ok` every 100 ms for up to 20 s (the files are looked at every
/// 2 s).
async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn certificates_and_credentials_rotate_without_a_restart() {
    let dir = process::fresh_data_dir();
    let (old, new) = (Ca::new("the old CA"), Ca::new("the new CA"));
    pki::write(&dir, "server", &old.server());
    let creds = dir.join("credentials.toml");
    let write_creds = |token: &str| {
        let aside = dir.join("credentials.new");
        std::fs::write(
            &aside,
            format!(
                "[[clients]]\nname = \"ivr\"\ntoken_sha256 = \"{}\"\nroles = [\"route\"]\n\n\
                 [[clients]]\nname = \"monitor\"\ntoken_sha256 = \"{}\"\nroles = [\"observe\"]\n",
                sha256(token),
                sha256("monitor-token")
            ),
        )
        .unwrap();
        std::fs::rename(&aside, &creds).unwrap();
    };
    write_creds("first-token");
    let server = Tls::start(dir.to_path_buf(), |c| c.credentials = Some(creds.clone())).await;
    let before = server.channel(&old.pem(), None).await.unwrap();
    assert_eq!(route(&before, Some("first-token")).await, Code::Ok);
    assert!(server.channel(&new.pem(), None).await.is_err());

    // The certificate is replaced by one of another CA: new connections
    // get it, the open one carries on.
    pki::write(&dir, "server", &new.server());
    eventually("the new certificate is served", async || {
        server.channel(&new.pem(), None).await.is_ok()
    })
    .await;
    assert!(server.channel(&old.pem(), None).await.is_err());
    assert_eq!(route(&before, Some("first-token")).await, Code::Ok);

    // A token rotated in the credentials file.
    write_creds("second-token");
    let after = server.channel(&new.pem(), None).await.unwrap();
    eventually("the new token is accepted", async || {
        route(&after, Some("second-token")).await == Code::Ok
    })
    .await;
    assert_eq!(
        route(&after, Some("first-token")).await,
        Code::Unauthenticated
    );

    // Broken replacements are refused and change nothing.
    std::fs::write(dir.join("server.crt"), "not a certificate").unwrap();
    std::fs::write(&creds, "[[clients]]\nname = \"ivr\"\n").unwrap();
    eventually("both refusals are counted", async || {
        let scrape = https_get(
            server.metrics,
            &new.pem(),
            "/metrics",
            Some("monitor-token"),
        )
        .await;
        ["tls", "credentials"].iter().all(|file| {
            let series = format!(
                "{}{{file=\"{file}\",result=\"refused\"}}",
                telemetry::FILE_RELOADS
            );
            metric(&scrape, &series) >= 1.0
        })
    })
    .await;
    let still = server.channel(&new.pem(), None).await.unwrap();
    assert_eq!(route(&still, Some("second-token")).await, Code::Ok);
    server.stop().await;
}

#[tokio::test]
async fn a_start_exposed_to_the_network_unprotected_is_refused() {
    let dir = process::fresh_data_dir();
    let ca = Ca::new("careroute test CA");
    let (cert, key) = pki::write(&dir, "server", &ca.server());
    let creds = credentials(&dir);
    let exposed = |configure: &dyn Fn(&mut Config)| {
        let mut config = Config::ephemeral();
        config.grpc_addr = "0.0.0.0:0".parse().unwrap();
        configure(&mut config);
        config
    };
    // Neither TLS nor credentials; then each without the other.
    for (config, missing) in [
        (
            exposed(&|_| {}),
            "without TLS (--tls-cert and --tls-key) or credentials (--credentials)",
        ),
        (
            exposed(&|c| c.credentials = Some(creds.clone())),
            "without TLS (--tls-cert and --tls-key):",
        ),
        (
            exposed(&|c| {
                c.tls_cert = Some(cert.clone());
                c.tls_key = Some(key.clone());
            }),
            "without credentials (--credentials):",
        ),
    ] {
        let refused = server::Listeners::bind(&config).await.err().unwrap();
        let message = refused.to_string();
        assert!(
            message.starts_with("refusing to listen on 0.0.0.0:0 ") && message.contains(missing),
            "{message}"
        );
        assert!(message.contains("--insecure"), "{message}");
    }
    // The metrics listener counts as much as the gRPC one.
    let mut config = Config::ephemeral();
    config.metrics_addr = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(
        server::Listeners::bind(&config).await,
        Err(ServerError::Exposed(_))
    ));
    // Protected, or insecure on purpose: it starts.
    let protected = exposed(&|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
        c.credentials = Some(creds.clone());
    });
    server::Listeners::bind(&protected).await.unwrap();
    server::Listeners::bind(&exposed(&|c| c.insecure = true))
        .await
        .unwrap();

    // The binary says so and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_careroute"))
        .args([
            "--no-journal",
            "--grpc-addr",
            "0.0.0.0:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("careroute: refusing to listen on 0.0.0.0:0 without TLS"),
        "{stderr}"
    );
}

#[test]
fn bad_tls_files_are_refused_naming_the_file() {
    use careroute::tls::{Tls, TlsFiles};
    let dir = process::fresh_data_dir();
    let ca = Ca::new("careroute test CA");
    let (cert, key) = pki::write(&dir, "server", &ca.server());
    let (_, other_key) = pki::write(&dir, "other", &ca.server());
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let files = |cert: &PathBuf, key: &PathBuf, client_ca: Option<&PathBuf>| TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: client_ca.cloned(),
    };
    Tls::load(files(&cert, &key, None)).unwrap();
    let cases = [
        (
            files(&cert, &other_key, None),
            &other_key,
            "cannot be used with",
        ),
        (
            files(&garbage, &key, None),
            &garbage,
            "not PEM certificates",
        ),
        (files(&empty, &key, None), &empty, "no certificate"),
        (files(&cert, &empty, None), &empty, "no PEM private key"),
        (files(&cert, &key, Some(&empty)), &empty, "no certificate"),
        (
            files(&dir.join("missing.crt"), &key, None),
            &dir.join("missing.crt"),
            "cannot read",
        ),
    ];
    for (files, at_fault, why) in cases {
        let e = Tls::load(files).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: ", at_fault.display())) && e.contains(why),
            "{e}\nexpected {}: {why}",
            at_fault.display()
        );
    }
}

/// A JSON POST over TLS offering only ALPN `http/1.1`, as an HTTP/1.1
/// client does, trusting `ca` and presenting `client`'s certificate: the
/// protocol agreed and the whole response.
async fn https_post_json(
    server: &Tls,
    ca: &str,
    client: &str,
    path: &str,
    body: &str,
) -> (Option<Vec<u8>>, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls_pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()).map(Result::unwrap),
    );
    let cert = std::fs::read(server.dir.join(format!("{client}.crt"))).unwrap();
    let key = std::fs::read(server.dir.join(format!("{client}.key"))).unwrap();
    let chain =
        <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
            &cert,
        )
        .map(Result::unwrap)
        .collect();
    let key = rustls_pki_types::pem::PemObject::from_pem_slice(&key).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    let agreed = s.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    (agreed, out)
}

#[tokio::test]
async fn http_json_is_served_over_tls_to_http1_clients_with_their_certificate_roles() {
    let dir = process::fresh_data_dir();
    let ca = Ca::new("careroute test CA");
    pki::write(&dir, "server", &ca.server());
    pki::write(&dir, "ivr", &ca.client("ivr.clinic.example"));
    std::fs::write(dir.join("clients-ca.crt"), ca.pem()).unwrap();
    let creds = credentials(&dir);
    let server = Tls::start(dir.to_path_buf(), |c| {
        c.tls_client_ca = Some(dir.join("clients-ca.crt"));
        c.credentials = Some(creds);
    })
    .await;
    let contact = r#"{"contactId":"c-https","channel":"CHANNEL_VOICE","intent":"clinical","urgency":"URGENCY_URGENT","identity":"IDENTITY_VERIFIED"}"#;
    let (agreed, answer) =
        https_post_json(&server, &ca.pem(), "ivr", "/v1/contacts:route", contact).await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"decisionId\":\"d-"), "{answer}");
    // The certificate's roles hold over HTTP/JSON too: the IVR may not
    // register agents.
    let (_, refused) = https_post_json(
        &server,
        &ca.pem(),
        "ivr",
        "/v1/agents:upsert",
        r#"{"agentId":"a-1"}"#,
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("ROLE_REQUIRED"), "{refused}");
    server.stop().await;
}
