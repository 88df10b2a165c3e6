#!/usr/bin/env bash
# Memory and CPU per call under N concurrent transcoded calls (loadgen --light → gateway →
# sipp -rtp_echo), with the gateway's allocator swapped by LD_PRELOAD or the gateway run
# under heaptrack. Prints calls up, % of a core per call (10 s window) and RSS above idle.
#
# usage: scripts/memory_per_call.sh [calls=100] [none|<allocator .so>|heaptrack]
#   e.g. scripts/memory_per_call.sh 100 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
#        scripts/memory_per_call.sh 100 heaptrack   # then: heaptrack_print -f target/memory/gw.zst
# Bounded: the generator stops after 20 s (timeout 90 s), then the gateway and sipp.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100}
MODE=${2:-none}
OUT=$ROOT/target/memory
mkdir -p "$OUT"
cargo build --release --locked -p gateway -p gateway-tests --bin gateway --bin loadgen >&2
python3 -c "import sys; sys.path.insert(0, '$ROOT/scripts'); import load_ramp; print(load_ramp.config($N + 100))" > "$OUT/gateway.toml"
HTTP=28180
sipp -sf "$ROOT/tests/sipp/echo.xml" -i 127.0.0.1 -p 25160 -mp 26160 -rtp_echo -m 1000000 \
  -nostdin -timeout 600s >/dev/null 2>&1 &
SIPP=$!
GATEWAY=("$ROOT/target/release/gateway" run --config "$OUT/gateway.toml")
case $MODE in
  none) "${GATEWAY[@]}" >"$OUT/gateway.log" 2>&1 & ;;
  heaptrack) rm -f "$OUT"/gw.*; heaptrack -o "$OUT/gw" "${GATEWAY[@]}" >"$OUT/gateway.log" 2>&1 & ;;
  *) LD_PRELOAD=$MODE "${GATEWAY[@]}" >"$OUT/gateway.log" 2>&1 & ;;
esac
trap 'pkill -TERM -f "$OUT/gateway.toml" || true; kill $SIPP 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null && break; sleep 0.2; done
GW=$(pgrep -f "release/gateway run --config $OUT/gateway.toml" | tail -1)
IDLE=$(awk '/VmRSS/{print $2}' "/proc/$GW/status")
timeout 90 "$ROOT/target/release/loadgen" --ws "ws://127.0.0.1:$HTTP/ws" --to echo --calls "$N" \
  --concurrency "$N" --seconds 20 --ramp-seconds 3 --light --sample 10 --json >"$OUT/loadgen.json" &
LOADGEN=$!
sleep 7
T0=$(awk '{print $14+$15}' "/proc/$GW/stat"); S0=$(date +%s.%N)
sleep 10
T1=$(awk '{print $14+$15}' "/proc/$GW/stat"); S1=$(date +%s.%N)
LOADED=$(awk '/VmRSS/{print $2}' "/proc/$GW/status")
UP=$(curl -s "http://127.0.0.1:$HTTP/metrics" | awk '/^gateway_active_calls /{print $2}')
wait $LOADGEN
TICKS=$(getconf CLK_TCK)
python3 - "$OUT/loadgen.json" <<PY
import json, sys
d = json.load(open(sys.argv[1]))
up = max(1.0, float("$UP"))
cpu = ($T1 - $T0) / $TICKS / ($S1 - $S0) * 100
print(f"$MODE: {up:.0f} calls up, {cpu / up:.3f} % of a core per call, "
      f"{($LOADED - $IDLE) / 1024 / up:.3f} MB per call (RSS {$IDLE / 1024:.1f} -> {$LOADED / 1024:.1f} MB), "
      f"{d['calls_ok']} ok, loss {d['loss_pct']} %, tone {d['tone_detected']}")
PY
