#!/usr/bin/env bash
# Installs, only when missing, the system packages the gateway's demo and tests use.
# Idempotent: a second run installs nothing. Works as root or through sudo.
set -euo pipefail

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)   # the SIP peer playing the trunk
# A second, independent SIP peer where sipp 3.6 cannot be one: SIP over TLS with SRTP (SDES).
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
# SpanDSP's G.722, the reference the gateway's G.722 coder is tested against (loaded at run
# time by `gateway::media::g722`'s tests).
ls /usr/lib/*/libspandsp.so.2 >/dev/null 2>&1 || need+=(libspandsp2)
# The TURN relay browsers behind strict firewalls reach the gateway through.
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
# The shared state of several gateways ([cluster]); the cluster tests start their own.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# A virtualenv for the Kubernetes manifests' schema check (kubernetes-validate from PyPI).
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Node.js and npm build the JavaScript example plugin (jco/componentize-js from npm).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Headless Chromium for the web demo's browser test (driven by playwright-core from npm).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Headless Firefox ESR, the second browser stack (driven by puppeteer-core over WebDriver BiDi).
command -v firefox-esr >/dev/null 2>&1 || need+=(firefox-esr)
# CMake builds libopus 1.6.1 from source for the Opus <-> G.711 bridge (the `opusic-sys`
# crate under audiopus, vendor/README.md), linked into the binaries statically.
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# setpriv runs the gateway without CAP_SYS_NICE in the test of `[media] nice` (util-linux,
# on every Debian; named in case a slimmed image left it out).
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)

if ((${#need[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.95 or newer (https://rustup.rs) and run this again" >&2
  exit 1
fi

# Plugins are WebAssembly components built from source for wasm32-wasip2.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
