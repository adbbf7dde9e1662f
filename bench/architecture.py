#!/usr/bin/env python3
"""The same calls on the tree before issue 19's restructuring and on this one, in one run.

  bench/architecture.py [--base f151e28] [--rounds 4] [--seconds 10]

Issue 19 moved code between crates (fleet, telemetry, store, test kit), made
the HTTP guard and limits tower layers, and changed how progress is relayed;
it must not cost speed. Both trees are built in release (the base in a git
worktree under bench/cache, sharing this checkout's target directory, so only
JetsonMind's own crates compile again), then measured in turns, the base and
this tree, each going first in alternate rounds:

1. gateway: `jetsonmind compute` as the only replica of `jetsonmind serve`,
   text_generate answered by the replica's inference cache (small own work:
   the layers in front of it are what is measured), `--concurrency` callers;
2. text generation: `jetsonmind serve` with no caches, one caller, greedy
   text_generate of 128 tokens, again and again: generated tokens/s end to end.

Both sides use the same load generator (this tree's `loadgen` example) and the
same model. Prints each round and the ratios this tree / base of the medians.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import BINARY, ROOT, start_server

BASE = "f151e28"  # the last commit before issue 19's moves (fleet, telemetry, store, layers, test kit)
CACHE = ROOT / "bench" / "cache" / "architecture"
LOADGEN = ROOT / "target" / "release" / "examples" / "loadgen"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHED_CALL = {"prompt": "What is the capital of France?", "max_tokens": 16, "temperature": 0}
GEN_TOKENS = 128
GEN_CALL = {"prompt": "Write a long story about the sea, the ships on it and the people who sail them.",
            "max_tokens": GEN_TOKENS, "temperature": 0}
# The load generator is the one client: no rate limit.
NO_LIMIT = {"JETSONMIND_HTTP__RATE_LIMIT_PER_SECOND": "0"}
NO_CACHES = {"JETSONMIND_CACHE__ENABLED": "false", "JETSONMIND_COMPUTE__PREFIX_CACHE": "false"}


def cargo_build(manifest_dir):
    # --workspace: features unified over every crate, as set-up's build has them, so nothing is built twice.
    subprocess.run(["cargo", "build", "--release", "--locked", "--workspace", "--bin", "jetsonmind",
                    "--example", "loadgen", "--target-dir", str(ROOT / "target")], cwd=manifest_dir, check=True)


def base_binary(commit):
    """The base tree's release binary, built once per commit."""
    resolved = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    binary = CACHE / resolved / "jetsonmind"
    if binary.is_file():
        return resolved, binary
    source = CACHE / "worktree"
    if source.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=ROOT)
        shutil.rmtree(source, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(source), resolved], cwd=ROOT, check=True)
    try:
        print(f"building {resolved[:10]} (JetsonMind's crates only; dependencies are shared) ...", flush=True)
        cargo_build(source)
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "target" / "release" / "jetsonmind", binary)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=ROOT)
    # The shared target directory's binary is the base's now: link this tree's again.
    print("building this tree ...", flush=True)
    cargo_build(ROOT)
    return resolved, binary


def start(binary, args, env, log):
    return start_server(args, {"RUST_LOG": "warn,jetsonmind=info", **NO_LIMIT, **env}, log, binary)


def stop(process):
    process.terminate()
    process.wait(timeout=30)


def cpu_seconds(process):
    """User and system CPU time `process` has used: its work, whatever else the machine runs."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url, call, seconds, concurrency):
    out = subprocess.run([str(LOADGEN), "--url", url, "--tool", "text_generate", "--args", json.dumps(call),
                          "--seconds", str(seconds), "--concurrency", str(concurrency)],
                         check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    if row["errors"]:
        sys.exit(f"{row['errors']} calls failed against {url}")
    return row


def measure(binary, data, tmp, options):
    """One side's figures: gateway calls/s and p50/p99, and generated tokens/s."""
    figures = {}
    if options.only in (None, "gateway"):
        figures.update(through_gateway(binary, data, tmp, options))
    if options.only in (None, "generation"):
        figures.update(generating(binary, data, tmp, options))
    return figures


def through_gateway(binary, data, tmp, options):
    common = ["--listen", "127.0.0.1:0", "--data-dir", str(data)]
    replica, replica_url = start(binary, ["compute", *common], {}, f"{tmp}/compute.log")
    try:
        gateway_env = {"JETSONMIND_CONTROL__LOCAL_REPLICA": "false",
                       "JETSONMIND_CONTROL__REPLICAS": json.dumps([replica_url])}
        gateway, url = start(binary, ["serve", *common], gateway_env, f"{tmp}/gateway.log")
        try:
            load(url, CACHED_CALL, 2, options.concurrency)  # warm: the answer is cached from here on
            before = cpu_seconds(gateway)
            row = load(url, CACHED_CALL, options.seconds, options.concurrency)
            gateway_cpu = cpu_seconds(gateway) - before
        finally:
            stop(gateway)
    finally:
        stop(replica)
    # Wall-clock rates move with whatever else this machine runs (two cores shared with the callers and the
    # replica); the gateway's own CPU time per call is the steadier measure of the layers in front of it.
    return {"gateway calls/s": row["calls_per_second"], "gateway p50 ms": row["p50_ms"],
            "gateway p99 ms": row["p99_ms"], "gateway CPU us/call": gateway_cpu / row["calls"] * 1e6}


def generating(binary, data, tmp, options):
    common = ["--listen", "127.0.0.1:0", "--data-dir", str(data)]
    threads = {"JETSONMIND_COMPUTE__THREADS": str(options.threads), **NO_CACHES}
    serve, url = start(binary, [options.generating_server, *common], threads, f"{tmp}/serve.log")
    try:
        load(url, GEN_CALL, 1, 1)  # the model loaded
        row = load(url, GEN_CALL, options.seconds * 2, 1)
    finally:
        stop(serve)
    return {"generated tokens/s": row["calls_per_second"] * GEN_TOKENS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=BASE, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["gateway", "generation"], help="measure one of the two")
    parser.add_argument("--generating-server", choices=["serve", "compute"], default="serve",
                        help="generate through serve's gateway (the default) or to compute alone")
    options = parser.parse_args()
    if not MODEL.is_file():
        sys.exit(f"{MODEL} is missing: run ./setup.sh")
    base, base_bin = base_binary(options.base)
    if not (BINARY.is_file() and LOADGEN.is_file()):
        cargo_build(ROOT)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    sides = {f"base {base[:7]}": base_bin, f"this tree {head}": BINARY}
    figures = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="jetsonmind-arch-bench-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([str(BINARY), "--data-dir", str(data), "models", "import", str(MODEL), "--link"],
                       check=True, capture_output=True)
        for round_ in range(1, options.rounds + 1):
            # Each side goes first in every other round: a machine that runs the second of two slower (or
            # faster) does not show as a difference between the trees.
            order = list(sides.items()) if round_ % 2 else list(sides.items())[::-1]
            for side, binary in order:
                row = measure(binary, data, tmp, options)
                figures[side].append(row)
                print(f"round {round_} {side:22} " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)

    metrics = list(next(iter(figures.values()))[0])
    medians = {side: {m: statistics.median(r[m] for r in rows) for m in metrics} for side, rows in figures.items()}
    (before, after) = medians.values()
    print(f"\nmedians of {options.rounds} rounds; {options.concurrency} callers through the gateway, "
          f"one generating ({GEN_TOKENS} tokens, {options.threads} threads)\n")
    print(f"{'':22}" + "".join(f"{m:>21}" for m in metrics))
    for side, row in medians.items():
        print(f"{side:22}" + "".join(f"{row[m]:21.2f}" for m in metrics))
    print(f"{'this tree / base':22}" + "".join(f"{after[m] / before[m]:21.3f}" for m in metrics))
    print("(calls/s and tokens/s: above 1 is faster; milliseconds and CPU per call: below 1 is faster)")


if __name__ == "__main__":
    main()
