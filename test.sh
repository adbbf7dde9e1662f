#!/usr/bin/env bash
# Runs every check and test. Needs ./setup.sh to have run once.
set -euo pipefail
cd "$(dirname "$0")"
# Each step says when it starts (seconds since the tests began): where the time goes.
say() { printf '==> [%4ds] %s\n' "$SECONDS" "$*"; }

say "format"
cargo fmt --all -- --check

say "the release binary the end-to-end tests drive (set-up built it)"
cargo build --release --locked

# The end-to-end tests mostly wait (clusters converging, containers starting, timeouts), so the lints and
# the Rust tests' build run beside them at the lowest priority, on the CPU they leave idle: the tests
# themselves are barely slowed. In a session of its own, stopped with this script if that stops early.
say "lints and the Rust tests' build, beside the end-to-end tests (log: target/test-build.log)"
setsid bash -c 'nice -n 19 cargo clippy --release --locked --all-targets -- -D warnings &&
    nice -n 19 cargo test --release --locked --no-run' >target/test-build.log 2>&1 &
build=$!
trap 'kill -- "-$build" 2>/dev/null || true' EXIT

say "end to end: jetsonmind serve driven by the official Python MCP SDK, other clients and a browser"
# The slowest tests are listed at the end, to see where CI time goes.
e2e=0
JETSONMIND_BIN=target/release/jetsonmind .venv/bin/python -m pytest tests/e2e -q --durations=15 || e2e=$?

say "waiting for the lints and the Rust tests' build"
if ! wait "$build"; then
    tail -60 target/test-build.log
    echo "lints or the Rust tests' build failed: target/test-build.log has all of it" >&2
    exit 1
fi
trap - EXIT

say "Rust tests (unit and integration)"
cargo test --release --locked

if [ "$e2e" -ne 0 ]; then
    echo "the end-to-end tests failed (exit $e2e): see above" >&2
    exit "$e2e"
fi
say "all passed"
