//! What authorization adds per call: `authorize::check` (the bearer token
//! read from the headers, hashed with SHA-256, the client looked up and
//! its roles checked) against a baseline measured in the same run, reading
//! the same header without checking it; and the same check for a client
//! known by its certificate (mutual TLS: its names, read once per
//! connection, looked up). Run with
//! `cargo bench --bench authorize`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{hint::black_box, time::Duration};

use careroute::{
    auth::{Credentials, Role},
    grpc::authorize::check,
    tls::Peer,
};
use criterion::{Criterion, criterion_group, criterion_main};
use sha2::Digest;

fn authorize(c: &mut Criterion) {
    // A file of 1,000 clients, like a large contact center's integrations.
    let mut text = String::new();
    for i in 0..1000 {
        let hash = hex::encode(sha2::Sha256::digest(format!("token-{i}").as_bytes()));
        text += &format!(
            "[[clients]]\nname = \"client-{i}\"\ntoken_sha256 = \"{hash}\"\ncertificate = \"client-{i}.clinic.example\"\nroles = [\"route\", \"observe\"]\n"
        );
    }
    let credentials = Credentials::parse("bench.toml", &text).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        "Bearer token-517".parse().unwrap(),
    );
    let mut group = c.benchmark_group("authorize");
    group.bench_function("baseline_read_header", |b| {
        b.iter(|| black_box(black_box(&headers).get(http::header::AUTHORIZATION)))
    });
    group.bench_function("check_token_and_role", |b| {
        b.iter(|| black_box(check(&credentials, black_box(&headers), None, Role::Route)).is_ok())
    });
    // A client certificate's names: a DNS name and its subject's CN.
    let peer = Peer {
        remote: None,
        certificate: Some(
            vec![
                Box::<str>::from("client-517.clinic.example"),
                Box::<str>::from("IVR 517"),
            ]
            .into(),
        ),
    };
    let no_header = http::HeaderMap::new();
    group.bench_function("check_certificate_and_role", |b| {
        b.iter(|| {
            black_box(check(
                &credentials,
                black_box(&no_header),
                Some(black_box(&peer)),
                Role::Route,
            ))
            .is_ok()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = authorize
}
criterion_main!(benches);
