//! What TLS costs: the same calls over loopback to a plaintext server, a
//! TLS server, and a mutual-TLS server that knows its client by its
//! certificate (credentials file), all in the same run. Per call on an
//! open connection: the empty RPC (grpc.health.v1 Check) and an emergency
//! RouteContact (which under credentials is also authorized); per new
//! connection: connect, handshake and one empty RPC. Certificates are made
//! with rcgen (ECDSA P-256). Run with `cargo bench --bench tls`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, sync::Arc, time::Duration};

use careroute::{
    clock::SystemClock,
    config::Config,
    grpc::pb::{self, routing_service_client::RoutingServiceClient},
    server,
};
use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The three servers.
#[derive(Clone, Copy)]
enum Mode {
    Plaintext,
    Tls,
    MutualTls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plaintext => "plaintext",
            Mode::Tls => "tls",
            Mode::MutualTls => "mtls_credentials",
        }
    }
}

/// A CA, careroute's certificate and a client's, written to `dir`.
fn pki(dir: &Path) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let sign = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = sign(vec!["localhost".into()]);
    let (client_cert, client_key) = sign(vec!["ivr.bench.example".into()]);
    std::fs::write(dir.join("server.crt"), server_cert).unwrap();
    std::fs::write(dir.join("server.key"), server_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(
        dir.join("credentials.toml"),
        "[[clients]]\nname = \"ivr\"\ncertificate = \"ivr.bench.example\"\nroles = [\"route\"]\n",
    )
    .unwrap();
    (ca.pem(), client_cert, client_key)
}

/// Starts a server of `mode` on `rt`; returns how to connect to it.
fn start(
    rt: &tokio::runtime::Runtime,
    mode: Mode,
    dir: &Path,
    ca: &str,
    client: &Identity,
) -> Endpoint {
    rt.block_on(async {
        let mut config = Config::ephemeral();
        if !matches!(mode, Mode::Plaintext) {
            config.tls_cert = Some(dir.join("server.crt"));
            config.tls_key = Some(dir.join("server.key"));
        }
        if matches!(mode, Mode::MutualTls) {
            config.tls_client_ca = Some(dir.join("ca.crt"));
            config.credentials = Some(dir.join("credentials.toml"));
        }
        let engine = server::build_engine(&config, chrono::Utc::now()).unwrap();
        let listeners = server::Listeners::bind(&config).await.unwrap();
        let port = listeners.grpc_addr().unwrap().port();
        tokio::spawn(async move {
            server::run(
                &config,
                listeners,
                engine,
                Arc::new(SystemClock),
                std::future::pending(),
            )
            .await
        });
        match mode {
            Mode::Plaintext => Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap(),
            Mode::Tls | Mode::MutualTls => {
                let mut tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost");
                if matches!(mode, Mode::MutualTls) {
                    tls = tls.identity(client.clone());
                }
                Endpoint::from_shared(format!("https://localhost:{port}"))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
            }
        }
    })
}

fn emergency(i: u64) -> pb::RouteContactRequest {
    pb::RouteContactRequest {
        contact_id: format!("bench-{}", i % 1024),
        channel: pb::Channel::Voice.into(),
        intent: "clinical".into(),
        urgency: pb::Urgency::Emergency.into(),
        identity: pb::Identity::Verified.into(),
        ..Default::default()
    }
}

fn tls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("careroute-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, client_cert, client_key) = pki(&dir);
    let client = Identity::from_pem(client_cert, client_key);
    let modes = [Mode::Plaintext, Mode::Tls, Mode::MutualTls];
    let servers: Vec<(Mode, Endpoint, Channel)> = modes
        .iter()
        .map(|&mode| {
            let endpoint = start(&rt, mode, &dir, &ca, &client);
            let channel = rt.block_on(endpoint.connect()).unwrap();
            (mode, endpoint, channel)
        })
        .collect();

    let mut group = c.benchmark_group("tls_call");
    for (mode, _, channel) in &servers {
        let health = HealthClient::new(channel.clone());
        group.bench_function(format!("{}/health_check", mode.name()), |b| {
            b.to_async(&rt).iter(|| {
                let mut health = health.clone();
                async move {
                    health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .unwrap()
                }
            });
        });
        let routing = RoutingServiceClient::new(channel.clone());
        let mut i = 0u64;
        group.bench_function(format!("{}/route_emergency", mode.name()), |b| {
            b.to_async(&rt).iter(|| {
                i += 1;
                let mut routing = routing.clone();
                let request = emergency(i);
                async move { routing.route_contact(request).await.unwrap() }
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("tls_connect");
    for (mode, endpoint, _) in &servers {
        group.bench_function(format!("{}/connect_and_call", mode.name()), |b| {
            b.to_async(&rt).iter(|| {
                let endpoint = endpoint.clone();
                async move {
                    let channel = endpoint.connect().await.unwrap();
                    HealthClient::new(channel)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .unwrap()
                }
            });
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = tls
}
criterion_main!(benches);
