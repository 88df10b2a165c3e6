#!/usr/bin/env bash
# The demo: a real SIP call from the gateway to a local echo trunk (sipp) with a probe tone,
# printing what the gateway measured. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p gateway

work=$(mktemp -d)
trap 'kill "$sipp_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/gateway.toml" <<TOML
[sip]
udp = "127.0.0.1:0"

[rtp]
ip = "127.0.0.1"
port_min = 40000
port_max = 40999

[trunks.echo]
addresses = ["127.0.0.1:25060"]
TOML
# sipp answers one call and echoes the RTP it receives (-rtp_echo).
(cd "$work" && sipp -sf "$OLDPWD/tests/sipp/echo.xml" -i 127.0.0.1 -p 25060 -mp 26000 -rtp_echo \
  -m 1 -nostdin -timeout 60s >/dev/null 2>&1) &
sipp_pid=$!
sleep 0.5
target/release/gateway check-config "$work/gateway.toml"
target/release/gateway dial --config "$work/gateway.toml" --trunk echo --to 100 --seconds 3 --dtmf 42 --json
