#!/usr/bin/env bash
# Runs every check and test. Needs ./setup.sh to have run once.
set -euo pipefail
cd "$(dirname "$0")"
# Each step says when it starts (seconds since the tests began): where the time goes.
say() { printf '==> [%4ds] %s\n' "$SECONDS" "$*"; }

say "format and lints"
cargo fmt --all -- --check
cargo clippy --release --locked --all-targets -- -D warnings

say "Rust tests (unit and integration)"
cargo test --release --locked

say "end to end: jetsonmind serve driven by the official Python MCP SDK"
cargo build --release --locked
# The slowest tests are listed at the end, to see where CI time goes.
JETSONMIND_BIN=target/release/jetsonmind .venv/bin/python -m pytest tests/e2e -q --durations=15
