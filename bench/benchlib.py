"""Helpers shared by the benchmarks in bench/."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "jetsonmind"
# The peers the benchmarks measure against, pinned, in a venv of their own (created on the first run).
PEERS = ROOT / "bench" / "cache" / "peers"
PEER_PACKAGES = ["faster-whisper==1.2.1", "ctranslate2==4.8.5", "onnxruntime==1.32.0", "onnx==1.23.2",
                 "numpy==2.4.6", "tokenizers==0.23.3", "pillow==13.0.0",
                 # RapidOCR's own pipeline (the peer of `ocr`) and what it imports; OpenCV without its GUI.
                 "opencv-python-headless==5.1.0.95", "pyclipper==1.4.0", "shapely==2.2.0", "six==1.17.0",
                 "PyYAML==6.0.4", "tqdm==4.70.1"]
# Installed without their declared dependencies: rapidocr names opencv-python, whose GUI needs libGL.
PEER_PACKAGES_NO_DEPS = ["rapidocr-onnxruntime==1.4.4"]


def percentile(values, p):
    """The p-th percentile of `values` (nearest rank; p in 0..100)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def start_server(args, env, log, binary=BINARY, within=60):
    """Start `binary args` with `env` added, its output in the file `log`; (process, MCP URL) once it says
    where it listens. Exits, naming the log, when it stops or stays silent."""
    with open(log, "wb") as sink:
        process = subprocess.Popen([str(binary), *args], stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **env})
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+/mcp)", Path(log).read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            sys.exit(f"{binary} {' '.join(args)} exited:\n{Path(log).read_text()}")
        time.sleep(0.05)
    process.kill()
    sys.exit(f"{binary} {' '.join(args)} did not start within {within} s: see {log}")


def require_binary():
    """Exit, saying how to build it, when the release binary is missing."""
    if not BINARY.is_file():
        sys.exit(f"{BINARY} is missing: run `cargo build --release --locked` (./setup.sh does)")


def engine_bench_args(doc, runtimes=None):
    """The command line of a benchmark against a peer engine (`--runs`, `--threads`, and `--runtimes`, a
    comma-separated list defaulting to `runtimes`, where the engine runs on more than one), once the binary and the
    end-to-end helpers are there."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds, each side once per round")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads each side uses")
    if runtimes:
        parser.add_argument("--runtimes", default=runtimes, type=lambda s: s.split(","),
                            help=f"the runtimes our side runs on, each a server of its own (default {runtimes})")
    args = parser.parse_args()
    require_binary()
    use_e2e_helpers()
    return args


def use_e2e_helpers():
    """Make the end-to-end tests' helpers (tests/e2e: real nats-servers, cluster nodes) importable;
    exit, saying why, when this python is not the one ./setup.sh makes (they report failures
    with pytest.fail)."""
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    for module in ("pytest", "mcp"):
        if importlib.util.find_spec(module) is None:
            sys.exit(f"no module {module}: run this with .venv/bin/python (./setup.sh makes it)")


def peers_python():
    """The peers' venv's python, the pinned packages installed."""
    python = PEERS / "bin" / "python"
    if not python.exists():
        venv.create(PEERS, with_pip=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *PEER_PACKAGES_NO_DEPS], check=True)
    return python


def run_peer(python, script, job):
    """Run bench/`script` in the peers' venv with `job` (JSON on its stdin); its JSON answer."""
    done = subprocess.run([str(python), str(ROOT / "bench" / script)], input=json.dumps(job),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
