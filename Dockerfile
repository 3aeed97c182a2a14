# Multi-stage build: compile with the Rust toolchain (protos are compiled by
# protox, so no protoc is needed), run from a small non-root image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin careroute
# The journal's directory, owned by the image's nonroot user (65532).
RUN mkdir -p /journal && chown 65532:65532 /journal

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/careroute /usr/local/bin/careroute
COPY --from=build --chown=65532:65532 /journal /var/lib/careroute
# In a container the listeners bind every interface, so they speak TLS and
# need credentials: both come from mounted secrets (a start without them
# says which file is missing). Mutual TLS is one more variable,
# CAREROUTE_TLS_CLIENT_CA (the Kubernetes manifests set it).
# On SIGTERM, report NOT_SERVING for 5 s before closing, so load balancers
# move traffic away first.
# The journal lives on a volume, so a restarted container carries on.
ENV CAREROUTE_GRPC_ADDR=0.0.0.0:50051 \
    CAREROUTE_METRICS_ADDR=0.0.0.0:9464 \
    CAREROUTE_TLS_CERT=/etc/careroute/tls/tls.crt \
    CAREROUTE_TLS_KEY=/etc/careroute/tls/tls.key \
    CAREROUTE_CREDENTIALS=/etc/careroute/credentials/credentials.toml \
    CAREROUTE_DRAIN_GRACE_MS=5000 \
    CAREROUTE_DATA_DIR=/var/lib/careroute
VOLUME ["/var/lib/careroute"]
EXPOSE 50051 9464
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/careroute"]
