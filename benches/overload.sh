#!/usr/bin/env bash
# Latency of a fresh connection under overload. A background h2load holds
# 100 connections x 1,000 requested streams of RouteContact for 60 s (the
# server grants --max-concurrent-streams of them per connection). Meanwhile a
# probe opens a fresh connection per call, 100 times one after another, and
# records its time to first byte; the same probe on the idle server first is
# the baseline of the run. The server's histogram then says how fast shed
# calls (RESOURCE_EXHAUSTED) were refused. Runs: the default stream limit
# (8), larger ones (16, and the old default 128), and the default with
# --max-in-flight 1 so that calls are shed and their refusal time measured.
# Run by hand: bash benches/overload.sh   (figures go in BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v h2load >/dev/null || { echo "install h2load: apt-get install nghttp2-client" >&2; exit 1; }
cargo build --release --locked --quiet --bin careroute
dir=$(mktemp -d)
python3 - "$dir" <<'PY'
import struct, sys
d = sys.argv[1]
def s(field, v): b = v.encode(); return bytes([field << 3 | 2, len(b)]) + b
def varint(field, v): return bytes([field << 3, v])
def frame(msg): return b"\x00" + struct.pack(">I", len(msg)) + msg
# A verified billing call: a full decision (an agent, then callbacks).
open(f"{d}/billing.bin", "wb").write(frame(s(1, "c-load-1") + varint(3, 1) + s(4, "billing") + varint(6, 2)))
PY
h2() { h2load -H 'content-type: application/grpc' -H 'te: trailers' -d "$dir/billing.bin" "$@"; }

# Time to first byte of one call on a fresh connection, `n` times; prints
# p50 and p99 in ms.
probe() {
  local url=$1 n=$2 out=$dir/probe.txt
  : >"$out"
  for _ in $(seq "$n"); do
    h2 -n 1 -c 1 -m 1 "$url" | awk '/time to 1st byte:/ { print $5 }' >>"$out"
  done
  python3 - "$out" <<'PY'
import sys
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit): return float(v[: -len(unit)]) * f
    return float(v)
xs = sorted(ms(l.strip()) for l in open(sys.argv[1]) if l.strip())
q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
print(f"  probes={len(xs)}  p50={q(0.50):.2f} ms  p99={q(0.99):.2f} ms  max={xs[-1]:.2f} ms")
PY
}

run() {
  local label=$1 limit=$2 grpc=127.0.0.1:50071 metrics=127.0.0.1:9481
  local streams=$3
  ./target/release/careroute --grpc-addr "$grpc" --metrics-addr "$metrics" \
    --max-in-flight "$limit" --max-concurrent-streams "$streams" >/dev/null 2>&1 &
  local pid=$!
  sleep 1
  local url="http://$grpc/careroute.v1.RoutingService/RouteContact"
  echo "== $label (--max-in-flight $limit, --max-concurrent-streams $streams)"
  echo "baseline: idle server"
  probe "$url" 100
  h2 -c 100 -m 1000 -D 60 "$url" >"$dir/load.txt" 2>&1 &
  local load=$!
  sleep 5
  echo "under load: 100 connections x 1,000 streams asked"
  probe "$url" 100
  wait "$load" || true
  grep -E "finished in|requests:" "$dir/load.txt" | sed 's/^/  load: /'
  local scrape
  scrape=$(curl -s "http://$metrics/metrics")
  echo "$scrape" | grep -E '^careroute_rpc_requests_total\{.*RouteContact' | sed 's/^/  /'
  # Shed calls by how fast they were refused (le = seconds).
  echo "$scrape" | grep -E '^careroute_rpc_duration_seconds_bucket\{.*code="RESOURCE_EXHAUSTED".*le="(0.00001|0.0001|0.001|\+Inf)"' | sed 's/^/  /' || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

run "default" 512 8
run "16 streams" 512 16
run "old default" 512 128
run "shedding" 1 8
