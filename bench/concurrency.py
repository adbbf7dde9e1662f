#!/usr/bin/env python3
"""Generation under concurrency: `jetsonmind serve` against llama.cpp's own `llama-server`.

  .venv/bin/python bench/concurrency.py [--slots 8] [--threads 2] [--max-tokens 64] [--requests 4]

Both serve the default model (SmolLM2-135M) with the same slot count, context per slot, batch size and
threads, continuous batching on both sides, and are driven the same way through their OpenAI-compatible
endpoints by the official `openai` client (streaming, so the time to the first token is seen; the last
chunk carries the usage), with JetsonMind's inference cache off:

1. At 1, 2, 4 and 8 concurrent clients, each sending `--requests` different prompts one after another:
   aggregate generated tokens/s, p50/p99 latency, p50 time to first token.
2. A prompt of about 1,500 tokens sent twice, the second time with a different last question: the time
   to first token of the first (nothing cached) and of the second (the prefix reused).

One server runs at a time, on an otherwise idle machine. Prints a table and the ratios, and writes
bench/results/concurrency.json. Needs ./setup.sh (release binary, the xllamacpp wheel, the model).
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from benchlib import BINARY, ROOT, percentile, require_binary

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp's own server, from the PyPI wheel xllamacpp (tests/e2e/llama_server.py says why and how).
LLAMA_SERVER = [sys.executable, str(ROOT / "tests" / "e2e" / "llama_server.py")]
RESULTS = ROOT / "bench" / "results" / "concurrency.json"
CONTEXT_PER_SLOT = 4096
BATCH = 512
TOPICS = ["the sea", "a mountain", "a city at night", "a forest", "the desert", "a river", "a library",
          "a train journey", "the moon", "a garden", "a storm", "an old castle", "a market", "a lighthouse",
          "a snowy village", "a volcano"]


def prompt(i):
    """A different prompt per request, each asking for a long answer (generation runs to max_tokens)."""
    return f"Write a long and detailed story about {TOPICS[i % len(TOPICS)]}, part {i}."


def long_prefix():
    """About 1,500 tokens of rules, as an agent's system prompt and tool definitions are."""
    return " ".join(f"Rule {i}: when the user asks about topic number {i}, answer politely, in plain words, "
                    f"and only with facts you are sure of." for i in range(1, 48))


def wait_for(url, process, log, what):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited: see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not become ready: see {log}")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process with an OpenAI API at `base_url`; stopped with SIGTERM."""

    def __init__(self, name, command, env, ready_path, api_path):
        self.name = name
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in command]
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False).name
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **env})
        root = f"http://127.0.0.1:{port}"
        wait_for(root + ready_path, self.process, self.log, name)
        self.base_url = root + api_path

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def llama_server(options):
    command = [*LLAMA_SERVER, "--host", "127.0.0.1", "--port", "{port}", "--model", str(MODEL),
               "--parallel", str(options.slots), "--ctx-size", str(CONTEXT_PER_SLOT * options.slots),
               "--kv-unified", "--cont-batching", "--threads", str(options.threads),
               "--threads-batch", str(options.threads), "--batch-size", str(BATCH), "--ubatch-size", str(BATCH)]
    return Server("llama-server", command, {}, "/health", "/v1")


def jetsonmind(options, prefix_cache=True):
    data = tempfile.mkdtemp(prefix="bench-concurrency-")
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    env = {
        "JETSONMIND_CACHE__ENABLED": "false",
        "JETSONMIND_COMPUTE__PARALLEL": str(options.slots),
        "JETSONMIND_COMPUTE__THREADS": str(options.threads),
        "JETSONMIND_COMPUTE__CONTEXT_SIZE": str(CONTEXT_PER_SLOT),
        "JETSONMIND_COMPUTE__BATCH_SIZE": str(BATCH),
        "JETSONMIND_COMPUTE__PREFIX_CACHE": str(prefix_cache).lower(),
        "JETSONMIND_COMPUTE__QUEUE_DEPTH": "64",
    }
    subprocess.run([str(BINARY), "models", "import", "--link", "--data-dir", data, str(MODEL)], check=True,
                   capture_output=True, env={**os.environ, **env})
    command = [str(BINARY), "serve", "--listen", "127.0.0.1:{port}", "--data-dir", data]
    server = Server("jetsonmind", command, env, "/v1/models", "/v1")
    # The first call loads the model: not part of any figure.
    ask(server, [{"role": "user", "content": "Hi."}], 4)
    return server


def ask(server, messages, max_tokens):
    """One streamed chat completion: (seconds to the first content, seconds in all, completion tokens,
    cached prompt tokens)."""
    import openai
    client = getattr(threading.current_thread(), "openai_clients", {}).get(server.base_url)
    if client is None:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused-on-loopback", max_retries=0,
                               timeout=600)
        thread = threading.current_thread()
        thread.openai_clients = {**getattr(thread, "openai_clients", {}), server.base_url: client}
    started = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(model="default", messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage:
            usage = chunk.usage
    total = time.perf_counter() - started
    if usage is None:
        sys.exit(f"{server.name} sent no usage chunk")
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details else 0
    return first if first is not None else total, total, usage.completion_tokens, cached


def at_concurrency(server, clients, options):
    """`clients` threads, each sending `--requests` different prompts in turn."""
    def client(c):
        return [ask(server, [{"role": "user", "content": prompt(c * options.requests + r)}], options.max_tokens)
                for r in range(options.requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        calls = [call for calls in pool.map(client, range(clients)) for call in calls]
    wall = time.perf_counter() - started
    tokens = sum(call[2] for call in calls)
    latencies = [call[1] for call in calls]
    return {
        "clients": clients,
        "calls": len(calls),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "ttft_p50_ms": percentile([call[0] for call in calls], 50) * 1000,
    }


def long_prompt_twice(server):
    """TTFT of a ~1,500-token prompt, then of the same prompt with another last question."""
    system = {"role": "system", "content": long_prefix()}
    cold = ask(server, [system, {"role": "user", "content": "Which rule is about topic 7?"}], 8)
    warm = ask(server, [system, {"role": "user", "content": "Which rule is about topic 12?"}], 8)
    return {"cold_ttft_ms": cold[0] * 1000, "warm_ttft_ms": warm[0] * 1000, "warm_cached_tokens": warm[3]}


def run_side(name, start, options):
    server = start(options)
    try:
        rows = [at_concurrency(server, clients, options) for clients in options.concurrency]
        prefix = long_prompt_twice(server)
    finally:
        server.stop()
    return {"server": name, "rows": rows, "prefix": prefix, "log": server.log}


def llama_commits():
    """Which llama.cpp each side runs."""
    server = subprocess.run([*LLAMA_SERVER, "--version"], capture_output=True, text=True, check=True)
    lock = (ROOT / "Cargo.lock").read_text()
    crate = re.search(r'name = "llama-cpp-sys-2"\nversion = "([^"]+)"', lock)
    return {"llama-server": server.stdout.strip(),
            "jetsonmind": f"the llama.cpp vendored in llama-cpp-sys-2 {crate.group(1) if crate else '?'} "
                          "(the crate records no llama.cpp commit)"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="prompts each client sends, one after another")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    options = parser.parse_args()
    require_binary()
    commits = llama_commits()
    sides = [run_side("llama-server", llama_server, options), run_side("jetsonmind", jetsonmind, options)]
    by_clients = {side["server"]: {row["clients"]: row for row in side["rows"]} for side in sides}
    print(f"llama-server runs {commits['llama-server']}; jetsonmind runs {commits['jetsonmind']}")
    print(f"{options.slots} slots, {options.threads} threads, {options.max_tokens} tokens per answer, "
          f"{options.requests} prompts per client\n")
    print(f"{'clients':>7} | {'llama-server tok/s':>18} {'p50 ms':>7} {'p99 ms':>7} {'TTFT':>6} | "
          f"{'jetsonmind tok/s':>16} {'p50 ms':>7} {'p99 ms':>7} {'TTFT':>6} | ratio")
    for clients in options.concurrency:
        a, b = by_clients["llama-server"][clients], by_clients["jetsonmind"][clients]
        print(f"{clients:>7} | {a['tokens_per_s']:>18.1f} {a['p50_ms']:>7.0f} {a['p99_ms']:>7.0f} "
              f"{a['ttft_p50_ms']:>6.0f} | {b['tokens_per_s']:>16.1f} {b['p50_ms']:>7.0f} {b['p99_ms']:>7.0f} "
              f"{b['ttft_p50_ms']:>6.0f} | {b['tokens_per_s'] / a['tokens_per_s']:.2f}")
    print("\n~1,500-token prompt, then the same with another last question (time to first token):")
    for side in sides:
        p = side["prefix"]
        print(f"  {side['server']:>12}: {p['cold_ttft_ms']:.0f} ms, then {p['warm_ttft_ms']:.0f} ms "
              f"({p['cold_ttft_ms'] / p['warm_ttft_ms']:.1f}x sooner; {p['warm_cached_tokens']} tokens reused)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"options": vars(options), "llama_cpp": commits, "sides": sides}, indent=2))
    print(f"\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
