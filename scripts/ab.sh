#!/usr/bin/env bash
# Two gateway builds under the same load, alternated pair by pair: how a change is judged on a
# box whose speed drifts by the minute (BENCHMARKS.md §6). Each pair runs both, the first
# build first in odd pairs and second in even ones, so neither always meets the box warmer.
#
#   scripts/ab.sh OLD NEW PAIRS [load_ramp.py arguments]
#   scripts/ab.sh /tmp/gateway-before target/release/gateway 4 --steps 50 --window 15
#   scripts/ab.sh /tmp/gateway-before target/release/gateway 3 --steps 100 --window 20 --opus-trunk
#
# OLD and NEW are gateway binaries, or executable scripts that `exec` one (to run it with
# something set in its environment: the measured process must be the one started). Each run
# is `scripts/load_ramp.py ARGS --runs 1 --no-build` with that build in
# target/release/gateway; one line a run: the time, the pair, which build, its CPU and RSS
# per call at the last step, its loss and whether the sampled tones were intact.
# target/release/gateway is put back as it was at the end, however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# < 3)); then
  sed -n '2,15p' "$0" >&2
  exit 2
fi
old=$(realpath "$1") new=$(realpath "$2") pairs=$3
shift 3
for build in "$old" "$new"; do
  [[ -x $build ]] || { echo "not an executable: $build" >&2; exit 2; }
done
binary=target/release/gateway
# Both builds copied aside first: either may be target/release/gateway itself.
aside=$(mktemp -d)
cp "$binary" "$aside/kept"
cp "$old" "$aside/old"
cp "$new" "$aside/new"
trap 'rm -f "$binary"; cp "$aside/kept" "$binary"; rm -rf "$aside"' EXIT
for ((pair = 1; pair <= pairs; pair++)); do
  if ((pair % 2)); then order=(old new); else order=(new old); fi
  for which in "${order[@]}"; do
    # A new file, not a write into the old one, which cargo's own copy may share (a hard link).
    rm -f "$binary"
    cp "$aside/$which" "$binary"
    out=$(python3 scripts/load_ramp.py "$@" --runs 1 --no-build 2>&1) || {
      echo "$out" | tail -20 >&2
      exit 1
    }
    last=$(echo "$out" | grep '^{"calls"' | tail -1)
    python3 -c '
import json, sys
row = json.loads(sys.argv[1])
print(sys.argv[2], "pair", sys.argv[3], sys.argv[4], "cpu %/call", row["gateway_cpu_pct_per_call"],
      "MB/call", row["gateway_rss_mb_per_call"], "loss %", row["loss_pct"], "tone", row["tone_intact"])
' "$last" "$(date +%H:%M:%S)" "$pair" "$which"
  done
done
