#!/usr/bin/env bash
# Fuzzes every parser the network or an operator reaches (gateway/fuzz/fuzz_targets), with
# cargo fuzz on the nightly toolchain.
#
#   scripts/fuzz.sh                 each target for 60 seconds
#   scripts/fuzz.sh 10              each target for 10 seconds
#   scripts/fuzz.sh --runs 1000000  each target for a million inputs
#   scripts/fuzz.sh 30 sip_datagram sdp_trunk     only these targets
#   scripts/fuzz.sh --if-nightly 5  skip quietly (exit 0) where nightly is not installed
#   scripts/fuzz.sh --dev 5         unoptimised build (4 minutes cold instead of 14): the
#                                   test command's brief run
#
# Corpora grow in gateway/fuzz/corpus/<target> (not committed); the seeds in
# gateway/fuzz/seeds are read as well. A crash leaves its input in
# gateway/fuzz/artifacts/<target>/: turn it into a regression test, then fix it. Each
# target's final libFuzzer statistics (executions, coverage) are printed, and a summary line
# per target at the end.
set -euo pipefail
cd "$(dirname "$0")/../gateway"

limit=(-max_total_time=60)
if_nightly=false
profile=-O
targets=()
while (($#)); do
  case "$1" in
    --runs) limit=(-runs="$2"); shift 2 ;;
    --if-nightly) if_nightly=true; shift ;;
    --dev) profile=--dev; shift ;;
    [0-9]*) limit=(-max_total_time="$1"); shift ;;
    *) targets+=("$1"); shift ;;
  esac
done

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if $if_nightly; then
    echo "fuzz: no nightly toolchain here; skipped" >&2
    exit 0
  fi
  echo "fuzz: needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# Seeds per target (read-only corpora beside the growing one).
declare -A seeds=(
  [sip_datagram]=rfc4475 [sip_stream]=rfc4475 [sdp_trunk]=sdp [sdp_browser]=browser_sdp
  [media_port]=stun [rtp_rtcp]=rtp [signaling]=signaling [config]=config
)
((${#targets[@]})) || targets=(sip_datagram sip_stream sdp_trunk sdp_browser media_port rtp_rtcp signaling config)

cargo +nightly fuzz build "$profile"
summary=()
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  log=$(mktemp)
  echo "== $target (${limit[*]})" >&2
  status=0
  cargo +nightly fuzz run "$profile" "$target" "$corpus" "fuzz/seeds/${seeds[$target]}" -- \
    "${limit[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+ *DONE|cov: ' "$log" | tail -4 >&2 || true
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo 0)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
  if ((status != 0)); then
    tail -40 "$log" >&2
    summary+=("$target: FAILED after $execs executions (cov $cov); see gateway/fuzz/artifacts/$target")
  else
    summary+=("$target: $execs executions, cov $cov, no crash")
  fi
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
if printf '%s\n' "${summary[@]}" | grep -q FAILED; then
  exit 1
fi
