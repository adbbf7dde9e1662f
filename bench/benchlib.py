"""Helpers shared by the benchmarks in bench/."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "jetsonmind"


def percentile(values, p):
    """The p-th percentile of `values` (nearest rank; p in 0..100)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def require_binary():
    """Exit, saying how to build it, when the release binary is missing."""
    if not BINARY.is_file():
        sys.exit(f"{BINARY} is missing: run `cargo build --release --locked` (./setup.sh does)")


def use_e2e_helpers():
    """Make the end-to-end tests' helpers (tests/e2e: real nats-servers, cluster nodes) importable;
    exit, saying why, when this python is not the one ./setup.sh makes (they report failures
    with pytest.fail)."""
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    for module in ("pytest", "mcp"):
        if importlib.util.find_spec(module) is None:
            sys.exit(f"no module {module}: run this with .venv/bin/python (./setup.sh makes it)")
