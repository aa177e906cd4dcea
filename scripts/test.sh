#!/usr/bin/env bash
# The test suite, as CI runs it: install the test servers, check formatting and lints, run every
# test (unit, property, and integration tests against real servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# A bounded fuzzing run of every target when asked (FUZZ_SECONDS per target; needs a first,
# slow sanitizer build).
if [ -n "${FUZZ_SECONDS:-}" ]; then
  fuzz/run.sh "$FUZZ_SECONDS"
fi
