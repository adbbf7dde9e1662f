#!/usr/bin/env python3
"""What the gateway and the control plane add to a call, under load.

  bench/gateway_latency.py [--seconds 10] [--concurrency 8]

Paths measured, each with the same call, one after another on an otherwise
idle machine (release build; `cargo build --release --example loadgen`):

1. compute direct: `jetsonmind compute` alone over HTTP.
2. through the gateway: `jetsonmind serve` with that compute process as its
   only replica (no local one), so every call crosses the gateway, the
   control plane's routing (fleet, breaker, ceiling) and a second HTTP hop.
3. the same with authentication on (an API key checked on every request).
4. the same gateway routing among three compute replicas.

The call is text_generate with greedy decoding, answered by the compute
replica's inference cache after the warm-up: a real tool call whose own work
is small, so the differences are the layers in front of it.

With `--mcp-stress DIR` (an npm prefix holding @mcp-stress/linux-x64) the
third-party load generator also measures the control path: `monitor_health`
straight to `jetsonmind control` and through the gateway.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import start_server

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "jetsonmind"
LOADGEN = ROOT / "target" / "release" / "examples" / "loadgen"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CALL = {"prompt": "What is the capital of France?", "max_tokens": 16, "temperature": 0}
# Rate limits are per client and this one client is the load: off here.
NO_LIMIT = {"JETSONMIND_HTTP__RATE_LIMIT_PER_SECOND": "0"}


def start(args, env, log):
    return start_server(args, env, log, BINARY)


def stop(process):
    process.terminate()
    process.wait(timeout=15)


def loadgen(url, seconds, concurrency, token=None):
    args = [str(LOADGEN), "--url", url, "--tool", "text_generate", "--args", json.dumps(CALL),
            "--seconds", str(seconds), "--concurrency", str(concurrency)]
    if token:
        args += ["--token", token]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def mcp_stress(prefix, url, seconds, concurrency):
    binary = Path(prefix) / "node_modules" / "@mcp-stress" / "linux-x64" / "bin" / "mcp-stress"
    out = subprocess.run(
        [str(binary), "run", "--url", url, "-p", "tool-flood", "--tool", "monitor_health",
         "-d", str(seconds), "-c", str(concurrency), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    summary = json.loads(out)
    return {"p50_ms": summary["overall"]["p50"], "p99_ms": summary["overall"]["p99"],
            "calls_per_second": summary["requestsPerSecond"], "errors": summary["totalErrors"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mcp-stress", help="npm prefix where @mcp-stress/linux-x64 is installed")
    options = parser.parse_args()
    for needed in [BINARY, LOADGEN, MODEL]:
        if not needed.exists():
            sys.exit(f"{needed} is missing: run ./setup.sh and `cargo build --release --example loadgen`")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([str(BINARY), "--data-dir", str(data), "models", "import", str(MODEL), "--link"],
                       check=True, capture_output=True)
        key = subprocess.run([str(BINARY), "--data-dir", str(data), "keys", "create", "--name", "bench",
                              "--scope", "tools:*"], check=True, capture_output=True, text=True).stdout.strip()
        common = ["--data-dir", str(data)]
        replicas = [start(["compute", "--listen", "127.0.0.1:0", *common], NO_LIMIT, f"{tmp}/c{i}.log")
                    for i in range(3)]
        try:
            run = lambda url, token=None: loadgen(url, options.seconds, options.concurrency, token)
            rows.append(("compute direct", run(replicas[0][1])))

            def through_gateway(urls, env, label, token=None):
                gateway_env = {**NO_LIMIT, "JETSONMIND_CONTROL__LOCAL_REPLICA": "false",
                               "JETSONMIND_CONTROL__REPLICAS": json.dumps(urls), **env}
                process, url = start(["serve", "--listen", "127.0.0.1:0", *common], gateway_env, f"{tmp}/g.log")
                try:
                    time.sleep(1)
                    rows.append((label, run(url, token)))
                    if options.mcp_stress and not token and len(urls) == 1:
                        rows.append(("mcp-stress monitor_health via gateway",
                                     mcp_stress(options.mcp_stress, url, options.seconds, options.concurrency)))
                finally:
                    stop(process)

            through_gateway([replicas[0][1]], {}, "gateway + control, 1 replica")
            through_gateway([replicas[0][1]], {"JETSONMIND_AUTH__REQUIRED": "true"},
                            "gateway + control + API key, 1 replica", key)
            through_gateway([r[1] for r in replicas], {}, "gateway + control, 3 replicas")
            if options.mcp_stress:
                process, url = start(["control", "--listen", "127.0.0.1:0", *common],
                                     {**NO_LIMIT, "JETSONMIND_CONTROL__REPLICAS": json.dumps([replicas[0][1]])},
                                     f"{tmp}/control.log")
                try:
                    rows.append(("mcp-stress monitor_health direct to control",
                                 mcp_stress(options.mcp_stress, url, options.seconds, options.concurrency)))
                finally:
                    stop(process)
        finally:
            for process, _ in replicas:
                stop(process)

    print(f"\n{options.concurrency} concurrent callers, {options.seconds} s each\n")
    print(f"{'path':45} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, row in rows:
        print(f"{label:45} {row['calls_per_second']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['errors']:7}")
    base = rows[0][1]
    print("\nadded over compute direct:")
    for label, row in rows[1:]:
        if label.startswith("gateway"):
            print(f"  {label:43} p50 +{row['p50_ms'] - base['p50_ms']:.2f} ms, p99 +{row['p99_ms'] - base['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
