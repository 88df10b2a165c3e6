#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the end-to-end tests against real
# SIP peers (sipp) on loopback. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# A fresh clone gains nothing from incremental compilation, and its caches (gigabytes for the
# gateway and its twenty test crates) are what filled the CI disk.
export CARGO_INCREMENTAL=0
cargo fmt --all --check
cargo fmt --all --check --manifest-path plugins/Cargo.toml
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --manifest-path plugins/Cargo.toml -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The example plugins' own logic, natively; the end-to-end tests build them for wasm.
cargo test --locked --no-fail-fast --manifest-path plugins/Cargo.toml 2>&1 | tee "$log"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee -a "$log"
# Every fuzz target for a few seconds (FUZZ_SECONDS, default 5) where the nightly toolchain
# is installed: an unoptimised build with the address sanitizer, about 4 minutes cold on 2
# cores. The long runs (millions of inputs) are scripts/fuzz.sh's, outside the suite.
scripts/fuzz.sh --if-nightly --dev "${FUZZ_SECONDS:-5}"
# One closing line for the whole run (cargo prints one per test binary, the last often 0).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
