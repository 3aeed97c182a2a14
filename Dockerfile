# Multi-stage build: compile with the Rust toolchain (protos are compiled by
# protox, so no protoc is needed), run from a small non-root image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin careroute

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/careroute /usr/local/bin/careroute
# In a container the listeners bind every interface.
# On SIGTERM, report NOT_SERVING for 5 s before closing, so load balancers
# move traffic away first.
ENV CAREROUTE_GRPC_ADDR=0.0.0.0:50051 \
    CAREROUTE_METRICS_ADDR=0.0.0.0:9464 \
    CAREROUTE_DRAIN_GRACE_MS=5000
EXPOSE 50051 9464
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/careroute"]
