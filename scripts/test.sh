#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the end-to-end tests against real
# SIP peers (sipp) on loopback. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
