#!/usr/bin/env bash
# The demo: builds the gateway and runs it in demo mode (no configuration: a built-in SIP
# trunk answers the targets `echo` and `tone`), checks the whole path once with a headless
# WebRTC caller, then keeps running until Ctrl-C. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p gateway -p gateway-tests --bin gateway --bin loadgen

target/release/gateway run &
gateway_pid=$!
trap 'kill -TERM "$gateway_pid" 2>/dev/null || true; wait "$gateway_pid" 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 50); do
  curl -fs http://localhost:8080/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
echo "checking the path with one WebRTC call to \`echo\` (tone out, tone back, DTMF 42):"
target/release/loadgen --ws ws://localhost:8080/ws --to echo --seconds 3 --dtmf 42
echo
echo "The gateway is running. Open http://localhost:8080/ and press Call (allow the microphone):"
echo "  \`echo\` returns your voice and keypad digits, \`tone\` plays 440 Hz."
echo "Signaling: ws://localhost:8080/ws (docs/protocol.md). Press Ctrl-C to stop."
wait "$gateway_pid"
