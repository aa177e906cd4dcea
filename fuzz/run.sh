#!/usr/bin/env bash
# Runs every cargo-fuzz target of tribridge's parsers of network input (rich text, IRC lines,
# Mattermost WebSocket frames, api network bodies) and of the configuration for SECONDS each and prints
# the executions per target.
#
# Usage: fuzz/run.sh SECONDS
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address and friends). By default the
# script runs the stable toolchain with RUSTC_BOOTSTRAP=1, which unlocks those flags on
# stable (the asan runtime ships with stable's rust-std); FUZZ_TOOLCHAIN=nightly uses a
# nightly toolchain instead. cargo-fuzz itself is installed from crates.io when missing.
# Build output goes to $CARGO_TARGET_DIR/fuzz when CARGO_TARGET_DIR is set, else fuzz/target.
set -euo pipefail

secs="${1:?usage: fuzz/run.sh SECONDS}"
case "$secs" in
  '' | *[!0-9]*) echo "SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

toolchain="${FUZZ_TOOLCHAIN:-stable}"
if [ "$toolchain" = stable ]; then
  export RUSTC_BOOTSTRAP=1
fi

target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
target_dir="${target_dir:-$here/target}"

targets=(irc_codes markdown html irc_wire mattermost_event config api_message)
echo "toolchain: $toolchain$([ "$toolchain" = stable ] && echo ' (RUSTC_BOOTSTRAP=1)'), ${secs}s per target"
cargo "+$toolchain" fuzz build --target-dir "$target_dir" >&2

status=0
declare -A runs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  if cargo "+$toolchain" fuzz run --target-dir "$target_dir" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    :
  else
    echo "== $t FAILED; last lines of its log:" >&2
    tail -n 40 "$log" >&2
    status=1
  fi
  # libFuzzer ends with "Done N runs in S second(s)"; stat::number_of_executed_units too.
  n="$(grep -oE 'Done [0-9]+ runs' "$log" | tail -n1 | grep -oE '[0-9]+' || true)"
  if [ -z "$n" ]; then
    n="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
  fi
  runs[$t]="$n"
  rm -f "$log"
done

for t in "${targets[@]}"; do
  echo "$t: ${runs[$t]} executions in ${secs}s"
done
exit "$status"
