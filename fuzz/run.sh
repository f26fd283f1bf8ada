#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds, PARALLEL at a time, on stable Rust (no sanitizer).
# Usage: fuzz/run.sh [SECS] [PARALLEL]   (defaults: 60 s, 2 at a time)
# Installs cargo-fuzz if it is missing. Fails if any target finds a crash; the crashing input is
# left in fuzz/artifacts/<target>/ (turn it into a regression test before fixing).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
parallel=${2:-2}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

targets=$(cargo fuzz list)
cargo fuzz build --sanitizer none -O >/dev/null

status=0
run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  if cargo fuzz run --sanitizer none -O "$t" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
      >"artifacts/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -m1 'stat::number_of_executed_units' "artifacts/$t.log" | awk '{print $2}') executions in ${secs}s"
  else
    echo "fuzz $t: FAILED (log: fuzz/artifacts/$t.log)"
    tail -30 "artifacts/$t.log"
    return 1
  fi
}

batch=()
for t in $targets; do
  batch+=("$t")
  if [ "${#batch[@]}" -ge "$parallel" ]; then
    pids=()
    for b in "${batch[@]}"; do run "$b" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    batch=()
  fi
done
if [ "${#batch[@]}" -gt 0 ]; then
  pids=()
  for b in "${batch[@]}"; do run "$b" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
fi
exit $status
