#!/usr/bin/env bash
# The test suite, as CI runs it: install the test servers, check formatting and lints, run every
# test (unit, property, and integration tests against real servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The library without the `matrix` feature (what the fuzz targets build) stays clean too.
cargo clippy --no-default-features --lib --locked -- -D warnings
cargo test --workspace --locked
# A bounded fuzzing run of every target: FUZZ_SECONDS each (20 by default, 0 skips it). The
# first sanitizer build takes about 7 minutes on two cores; a crash fails the run.
fuzz_seconds="${FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != 0 ]; then
  fuzz/run.sh "$fuzz_seconds"
fi
