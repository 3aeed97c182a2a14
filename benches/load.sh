#!/usr/bin/env bash
# Throughput of RouteContact against an empty-RPC baseline (Health/Check),
# measured in the same run with h2load (Debian's nghttp2-client) over
# loopback: 8 connections x 8 streams (the server grants 8 per connection,
# --max-concurrent-streams: more in h2load's first burst are refused before
# its settings arrive), 200,000 calls per case.
# Run by hand: bash benches/load.sh   (figures go in BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v h2load >/dev/null || { echo "install h2load: apt-get install nghttp2-client" >&2; exit 1; }
cargo build --release --locked --quiet --bin careroute
grpc=127.0.0.1:50061 metrics=127.0.0.1:9474
dir=$(mktemp -d)
./target/release/careroute --grpc-addr "$grpc" --metrics-addr "$metrics" --data-dir "$dir/journal" ${JOURNAL_ARGS:-} >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sleep 1
# gRPC framing: 0x00, 4-byte big-endian length, then the protobuf bytes.
python3 - "$dir" <<'PY'
import struct, sys
d = sys.argv[1]
def s(field, v): b = v.encode(); return bytes([field << 3 | 2, len(b)]) + b
def varint(field, v): return bytes([field << 3, v])
def frame(msg): return b"\x00" + struct.pack(">I", len(msg)) + msg
open(f"{d}/health.bin", "wb").write(frame(b""))
# Emergency urgency: guards only, no agent choice.
open(f"{d}/emergency.bin", "wb").write(frame(s(1, "c-load-2") + varint(3, 1) + s(4, "billing") + varint(5, 3) + varint(6, 2)))
# A verified billing call: the demo's billing agents are soon reserved, then
# each call is a full decision ending in a callback with its deadline.
open(f"{d}/billing.bin", "wb").write(frame(s(1, "c-load-1") + varint(3, 1) + s(4, "billing") + varint(6, 2)))
PY
for case in health:/grpc.health.v1.Health/Check emergency:/careroute.v1.RoutingService/RouteContact billing:/careroute.v1.RoutingService/RouteContact; do
  name=${case%%:*} path=${case#*:}
  echo "== $name"
  h2load -n 200000 -c 8 -m 8 -d "$dir/$name.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$grpc$path" | grep -E "finished in|requests:|time for request"
done
# h2load does not read grpc-status: the server's own count of codes.
curl -s "http://$metrics/metrics" | grep '^careroute_rpc_requests_total'
