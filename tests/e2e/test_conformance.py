"""The official MCP conformance suite (@modelcontextprotocol/conformance,
installed by ./setup.sh into tests/conformance) against `jetsonmind serve`:
every server scenario that needs none of the suite's fixtures. A scenario
fails with the suite's own report. Checks that cannot pass, and why, are
listed in tests/conformance/expected-failures.yaml."""

import os
import re
import subprocess

import pytest

from conftest import ROOT, start_serve, stop_serve

SUITE = ROOT / "tests" / "conformance"
BIN = SUITE / "node_modules" / ".bin"
BASELINE = SUITE / "expected-failures.yaml"

SCENARIOS = [
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "dns-rebinding-protection",
    "http-header-validation",
    "server-stateless",
    "caching",
    "sep-2164-resource-not-found",
]


@pytest.fixture(scope="module")
def conformance_server(binary, data_dir, tmp_path_factory):
    """A server of its own: the suite's probes must not touch other tests' state."""
    served = start_serve(binary, data_dir, tmp_path_factory.mktemp("logs") / "conformance.log")
    yield served
    stop_serve(served)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario, conformance_server, tmp_path):
    if not (BIN / "conformance").exists():
        pytest.fail(f"{BIN / 'conformance'} is missing: run ./setup.sh (npm ci in {SUITE})")
    # The Node the suite needs (22) comes with it on x86-64 and arm64; elsewhere, PATH's.
    node = BIN / "node" if (BIN / "node").exists() else "node"
    command = [str(node), str(BIN / "conformance"), "server", "--url", conformance_server.url,
               "--scenario", scenario, "--expected-failures", str(BASELINE), "--output-dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"})
    report = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)  # it colours even when told not to
    assert run.returncode == 0, f"conformance {scenario} failed:\n{report}"
