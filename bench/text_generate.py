#!/usr/bin/env python3
"""Benchmark text_generate through the whole stack against llama.cpp itself.

  bench/text_generate.py [--runs 3] [--threads 2]

1. llama.cpp's own llama-bench (built by bench/build-llama-bench.sh from the
   source JetsonMind links) on the same GGUF: prompt and generation tokens/s.
2. `jetsonmind serve` (release build), called with the official Python MCP
   client through the gateway: text_generate's own timings (prompt and
   generation tokens/s measured inside the compute server) and the rate the
   client sees end to end.
3. The gateway's added latency: the same cheap call (a tool that answers at
   once) sent straight to `jetsonmind compute` and through `jetsonmind serve`'s
   gateway, over keep-alive HTTP; the difference of the medians.

Run in turn, never at once, on an otherwise idle machine. Prints a table and
the ratios. Needs ./setup.sh to have run.
"""

import argparse
import asyncio
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import BINARY, ROOT, percentile, start_server

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEN_TOKENS = 128
# About 100 prompt tokens once the chat template is applied, and a request
# the model answers at length, so generation runs to max_tokens.
PROMPT = (
    "Here are some notes about the sea. The sea covers most of the planet and holds most of its water. "
    "Tides rise and fall twice a day, pulled by the moon. Fish, whales and plankton live in it, and "
    "ships have crossed it for thousands of years. Storms form over warm water and can travel far. "
    "Now write a very long story about a sailor who crosses the sea, with many chapters and details."
)


def llama_bench(threads, runs, prompt_tokens):
    """Prompt processing of `prompt_tokens`, then GEN_TOKENS generated after
    that many tokens of context (`-d`), as text_generate does."""
    binary = subprocess.run([str(ROOT / "bench" / "build-llama-bench.sh")], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]

    def run(*args):
        out = subprocess.run([binary, "-m", str(MODEL), "-t", str(threads), "-r", str(runs), "-o", "json", *args],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)[0]["avg_ts"]

    return run("-p", str(prompt_tokens), "-n", "0"), run("-p", "0", "-n", str(GEN_TOKENS), "-d", str(prompt_tokens))


def start(args, env):
    log = tempfile.NamedTemporaryFile(prefix="jetsonmind-bench-", suffix=".log", delete=False)
    log.close()
    return start_server(args, env, log.name)


async def through_gateway(url, runs):
    from mcp import Client

    rows = []
    async with Client(url, mode="auto") as client:
        args = {"prompt": PROMPT, "max_tokens": GEN_TOKENS, "temperature": 0}
        await client.call_tool("text_generate", args)  # load the model, warm caches
        for _ in range(runs):
            started = time.perf_counter()
            result = await client.call_tool("text_generate", args)
            wall = time.perf_counter() - started
            out = result.structured_content
            rows.append((out["timings"], out["usage"], wall))
    return rows


def call_latencies(url, calls):
    """Sequential tools/call round trips on one keep-alive connection, in ms."""
    host, port = url.removeprefix("http://").removesuffix("/mcp").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "embed", "arguments": {"texts": ["x"]}}})
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    times = []
    for i in range(calls + 50):
        started = time.perf_counter()
        connection.request("POST", "/mcp", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"tools/call answered {response.status}")
        if i >= 50:  # warm-up
            times.append((time.perf_counter() - started) * 1000)
    connection.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--env", action="append", type=lambda kv: kv.split("=", 1),
                        help="KEY=VALUE for the servers, e.g. JETSONMIND_COMPUTE__PROGRESS_EVERY_TOKENS=8")
    options = parser.parse_args()
    for path in (BINARY, MODEL):
        if not path.exists():
            sys.exit(f"{path} is missing: run ./setup.sh")

    data = tempfile.mkdtemp(prefix="jetsonmind-bench-")
    # Imported by hard link into a data dir of its own: the repository's
    # models/ stays as it is, so llama-bench below and the next run find the GGUF.
    subprocess.run([str(BINARY), "--data-dir", data, "models", "import", str(MODEL), "--link"],
                   check=True, capture_output=True)
    # Neither the inference cache nor the prompt prefix cache: the runs repeat one greedy call, and
    # each must read its whole prompt and generate, as llama-bench does.
    env = {"JETSONMIND_COMPUTE__THREADS": str(options.threads), "JETSONMIND_CACHE__ENABLED": "false",
           "JETSONMIND_COMPUTE__PREFIX_CACHE": "false", "RUST_LOG": "warn", **dict(options.env or [])}
    serve, serve_url = start(["serve", "--listen", "127.0.0.1:0", "--data-dir", data], env)
    try:
        print("jetsonmind serve: text_generate through the gateway ...", flush=True)
        rows = asyncio.run(through_gateway(serve_url, options.runs))
        print(f"latency: {options.calls} calls through the gateway ...", flush=True)
        via_gateway = call_latencies(serve_url, options.calls)
    finally:
        serve.terminate()
        serve.wait()
    compute, compute_url = start(["compute", "--listen", "127.0.0.1:0", "--data-dir", data], env)
    try:
        print(f"latency: {options.calls} calls straight to compute ...", flush=True)
        direct = call_latencies(compute_url, options.calls)
    finally:
        compute.terminate()
        compute.wait()

    prompt_tokens = rows[0][1]["prompt_tokens"]
    print(f"llama-bench: -t {options.threads} -p {prompt_tokens}; -n {GEN_TOKENS} -d {prompt_tokens}; "
          f"-r {options.runs} ...", flush=True)
    ref_prompt, ref_gen = llama_bench(options.threads, options.runs, prompt_tokens)

    ours_prompt = statistics.mean(t["prompt_tokens_per_second"] for t, _, _ in rows)
    ours_gen = statistics.mean(t["generation_tokens_per_second"] for t, _, _ in rows)
    # What the stack adds around the model's own work: MCP, gateway, HTTP, context set-up.
    overhead_ms = statistics.mean(wall * 1000 - t["prompt_ms"] - t["generation_ms"] for t, _, wall in rows)
    gen_tokens = statistics.mean(u["completion_tokens"] for _, u, _ in rows)

    print()
    print(f"{'':38} {'prompt tok/s':>13} {'gen tok/s':>10}")
    print(f"{'llama.cpp llama-bench':38} {ref_prompt:13.1f} {ref_gen:10.1f}")
    print(f"{'text_generate via gateway (server)':38} {ours_prompt:13.1f} {ours_gen:10.1f}")
    print(f"(both: {prompt_tokens} prompt tokens, {gen_tokens:.0f} generated after them; ours per run: "
          + ", ".join(f"{t['generation_tokens_per_second']:.0f}" for t, _, _ in rows) + ")")
    print(f"ratio prompt {ours_prompt / ref_prompt:.3f}, generation {ours_gen / ref_gen:.3f}")
    print(f"per call, outside the model's own work (MCP, gateway, HTTP, context set-up): {overhead_ms:.1f} ms")
    d50, d99 = percentile(direct, 50), percentile(direct, 99)
    g50, g99 = percentile(via_gateway, 50), percentile(via_gateway, 99)
    print(f"call latency ms: compute p50 {d50:.3f} p99 {d99:.3f}; gateway p50 {g50:.3f} p99 {g99:.3f}; "
          f"added by the gateway p50 {g50 - d50:.3f} ms")


if __name__ == "__main__":
    main()
