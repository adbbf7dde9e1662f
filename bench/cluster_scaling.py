#!/usr/bin/env python3
"""How the edge cluster scales: 1, 2, 4, 8 and 16 nodes on one NATS JetStream cluster.

  .venv/bin/python bench/cluster_scaling.py [--nodes 1,2,4,8,16] [--seconds 10] [--concurrency 4]
                                            [--json results.json]

Two cores cannot show scaling with real inference, so the nodes run the
inference simulator (`compute.engine = "simulated"`): each call sleeps a
fixed time per prompt token and per output token, and uses no CPU for it.

1. Scaling. A 3-server JetStream cluster (tests/e2e/natscluster.py) for the
   whole run; for each N, N `jetsonmind serve --cluster` processes, each with
   `compute.parallel` = the per-node concurrency, least_outstanding routing
   and the cache off. Once node 1's gateway sees all N replicas, a fixed load
   per node (per-node concurrency x N callers, each a keep-alive HTTP
   connection calling text_generate back to back) runs for --seconds,
   (a) all through node 1's gateway, (b) spread over all N gateways.
   Efficiency is T(N) / (N x T(1)), T = calls/s, against the same mode's T(1).
2. The NATS hop. Two nodes: h2 with a compute replica, h1 a gateway with none
   (`control.local_replica = false`), so every call through h1 is served by
   h2 over NATS. The same call, one at a time, alternately through h2's
   gateway (served in-process) and h1's; added = remote - local, p50 and p99.
3. The cluster latency KPI (< 200 ms) with a short real generation: the same
   two-node set-up with llama.cpp and the default model, max_tokens 16.

The caller is a small asyncio HTTP/1.1 client (one connection per caller, no
MCP session: the server speaks stateless Streamable HTTP), so that it costs
little CPU; each row says how much CPU the client, the jetsonmind nodes and
the nats-servers used, in cores, and how busy the whole machine was, to show
where the time went on a small machine. Every row says which engine answered,
read from the results.

Everything lives in a temporary directory, and every process is stopped at
the end, on an error or on Ctrl-C. Needs ./setup.sh (.venv with nats-server
and pytest, the default model) and `cargo build --release`.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit

from benchlib import BINARY, percentile, require_binary, use_e2e_helpers

use_e2e_helpers()
import pytest  # noqa: E402
from conftest import NO_CACHE, start_cluster_node, stop_serve  # noqa: E402
from natscluster import NatsCluster  # noqa: E402

PROMPT = "What is the capital of France?"
PROTOCOL_VERSION = "2025-11-25"
SIMULATED = "simulated"
REAL = "llama.cpp"
KPI_MS = 200.0
HOP_GOAL_MS = 2.0
EFFICIENCY_GOAL = 0.9
# Calls made first on each path of a local/remote comparison and not counted
# (connections, the model's first load).
HOP_WARMUP_CALLS = 5
READY_TIMEOUT_S = 60

# What every node runs with. Routing by calls in flight spreads the load (the
# default, affinity, keeps calls where the model is loaded); the cache would
# answer repeated calls without generating; one client on loopback is the
# whole load, so no rate limit.
NODE_ENV = {
    **NO_CACHE,
    "JETSONMIND_CONTROL__STRATEGY": "least_outstanding",
    "JETSONMIND_HTTP__RATE_LIMIT_PER_SECOND": "0",
    "RUST_LOG": "warn",
}


# -- the client -----------------------------------------------------------------


class CallFailed(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection to a gateway's MCP endpoint, one request at a time."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.reader = self.writer = None

    async def post(self, body):
        """POSTs a JSON-RPC message (bytes); its JSON answer."""
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"MCP-Protocol-Version: {PROTOCOL_VERSION}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.write(head.encode() + body)
            status, answer = await self._response()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, CallFailed) as error:
            self.close()  # the next call connects again
            raise CallFailed(f"connection: {error!r}") from error
        if status != 200:
            raise CallFailed(f"HTTP {status}: {answer[:200]!r}")
        return json.loads(answer)

    async def _response(self):
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if "content-length" in headers:
            return status, await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") != "chunked":
            raise CallFailed(f"HTTP {status} with neither a length nor chunks")
        chunks = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append((await self.reader.readexactly(size + 2))[:-2])
        await self.reader.readuntil(b"\r\n")  # the end of the (empty) trailers
        return status, b"".join(chunks)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def tool_call(name, arguments):
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    ).encode()


def generate_call(max_tokens):
    return tool_call("text_generate", {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0})


class Served:
    """Who answered a successful text_generate: the last hop of its route, and the engine."""

    def __init__(self, answer):
        result = answer.get("result")
        if result is None or result.get("isError"):
            raise CallFailed(json.dumps(answer.get("error") or result)[:300])
        meta = result.get("_meta") or {}
        hop = (meta.get("jetsonmind/route") or [{}])[-1]
        self.node, self.replica = hop.get("node"), hop.get("replica")
        # Only the simulator marks its results; llama.cpp's carry no engine.
        self.engine = meta.get("jetsonmind/engine", REAL)


async def timed_call(connection, body):
    """(latency in ms, Served) of one call."""
    started = time.perf_counter()
    served = Served(await connection.post(body))
    return (time.perf_counter() - started) * 1000, served


# -- processes ------------------------------------------------------------------


def cpu_seconds(pids):
    """User + system CPU time the processes have used so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def machine_busy_seconds():
    """CPU time the whole machine has spent busy so far, all processes (from /proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Cluster:
    """The NATS cluster and the jetsonmind nodes running on it now; the nodes' files under `workdir`."""

    def __init__(self, nats, workdir):
        self.nats = nats
        self.workdir = workdir
        self.nodes = {}

    def start(self, names, env):
        """Starts the first node, then the others together; all of them or, stopping the rest, none.
        (Nodes joining a new NATS cluster all at once can race to create its membership bucket, and
        one may exit with "no stream found": the first one creates it.)"""
        self._start_together(names[:1], env)
        self._start_together(names[1:], env)

    def _start_together(self, names, env):
        if not names:
            return
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            started = {
                name: pool.submit(start_cluster_node, BINARY, self.workdir, self.nats.urls, name, env)
                for name in names
            }
        failed = None
        for name, future in started.items():
            if future.exception() is None:
                self.nodes[name] = future.result()
            else:
                failed = failed or future.exception()
        if failed is not None:
            self.stop()
            raise failed

    def url(self, name):
        return self.nodes[name].url

    def node_pids(self):
        return [node.process.pid for node in self.nodes.values()]

    def nats_pids(self):
        return [server.process.pid for server in self.nats.servers if server.process is not None]

    def cpu(self):
        """CPU seconds used so far by: the jetsonmind nodes, the nats-servers, the machine, node 1."""
        first = self.node_pids()[:1]
        return (cpu_seconds(self.node_pids()), cpu_seconds(self.nats_pids()), machine_busy_seconds(),
                cpu_seconds(first))

    def cpu_cores(self, seconds):
        """Cores used meanwhile by each of `cpu()`, over the next `seconds` of idling."""
        before = self.cpu()
        time.sleep(seconds)
        return [(after - was) / seconds for was, after in zip(before, self.cpu())]

    def stop(self):
        """Stops every node (SIGTERM, then SIGKILL), all at once; none is left even when one fails to stop."""
        nodes, self.nodes = list(self.nodes.values()), {}
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            stopped = [pool.submit(stop_serve, node) for node in nodes]
        for node, future in zip(nodes, stopped):
            if future.exception() is not None:
                node.process.kill()
                print(f"warning: {node.log} did not stop on SIGTERM", file=sys.stderr)


async def wait_for_replicas(url, nodes):
    """Until the gateway at `url` has exactly the replicas of `nodes` up (stale members gone) and offers
    text_generate."""
    connection = Connection(url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = None
    try:
        while time.monotonic() < deadline:
            answer = await connection.post(tool_call("monitor_health", {}))
            replicas = answer["result"]["structuredContent"]["replicas"]
            seen = {r.get("node") for r in replicas if r["up"]}
            if seen == set(nodes) and await offers(connection, "text_generate"):
                return
            await asyncio.sleep(0.2)
    finally:
        connection.close()
    raise CallFailed(
        f"{url}: replicas of {sorted(nodes)} not all up, or no text_generate, after {READY_TIMEOUT_S} s "
        f"(up: {seen})"
    )


async def offers(connection, tool):
    """Whether the gateway lists `tool` (one without a replica of its own learns it from the first one)."""
    answer = await connection.post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode())
    return any(t["name"] == tool for t in answer["result"]["tools"])


# -- measurements -----------------------------------------------------------------


class Window:
    """The counted part of a run: calls that end between `start` and `end` (perf_counter seconds)."""

    def __init__(self, warmup, seconds):
        self.start = time.perf_counter() + warmup
        self.end = self.start + seconds

    def counts(self, moment):
        return self.start <= moment <= self.end


async def caller(url, body, window, latencies, served_by, errors):
    """Calls back to back on one connection until the window ends."""
    connection = Connection(url)
    try:
        while time.perf_counter() < window.end:
            started = time.perf_counter()
            try:
                served = Served(await connection.post(body))
            except CallFailed as error:
                if window.counts(time.perf_counter()):
                    errors.append(str(error))
                continue
            ended = time.perf_counter()
            if window.counts(ended):
                latencies.append((ended - started) * 1000)
                served_by[served.engine, served.node] = served_by.get((served.engine, served.node), 0) + 1
    finally:
        connection.close()


async def load(urls, body, warmup, seconds):
    """One caller per URL in `urls` for warmup + seconds; what the counted seconds saw."""
    window = Window(warmup, seconds)
    latencies, served_by, errors = [], {}, []
    await asyncio.gather(*(caller(url, body, window, latencies, served_by, errors) for url in urls))
    return latencies, served_by, errors


def run_load(cluster, urls, options):
    """`load`, with the calls each node served and the CPU used meanwhile, in cores: by the client, by
    the jetsonmind nodes, by the nats-servers, and by the whole machine (anyone else's work too)."""
    before, client_before, wall_before = cluster.cpu(), time.process_time(), time.monotonic()
    latencies, served_by, errors = asyncio.run(
        load(urls, generate_call(options.max_tokens), options.warmup, options.seconds)
    )
    wall = time.monotonic() - wall_before
    nodes_cpu, nats_cpu, machine_cpu, node1_cpu = [(after - was) / wall for was, after in zip(before, cluster.cpu())]
    calls_per_second = len(latencies) / options.seconds
    per_node = {name: 0 for name in cluster.nodes}
    for (_, node), calls in served_by.items():
        per_node[node] = per_node.get(node, 0) + calls
    return {
        "engine": ", ".join(sorted({engine for engine, _ in served_by})) or "none answered",
        "concurrency": len(urls),
        "calls": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "calls_per_second": calls_per_second,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "client_cpu_cores": (time.process_time() - client_before) / wall,
        "nodes_cpu_cores": nodes_cpu,
        "node1_cpu_cores": node1_cpu,
        "nats_cpu_cores": nats_cpu,
        # What one call costs the servers, all processes on its way together.
        "servers_cpu_ms_per_call": (nodes_cpu + nats_cpu) * 1000 / calls_per_second if calls_per_second else None,
        "machine_cpu_cores": machine_cpu,
        "machine_cores": os.cpu_count(),
        # Every node should serve about as many calls: a spread shows routing piling calls on some.
        "calls_by_node": dict(sorted(per_node.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))),
    }


def simulator_env(options):
    return {
        "JETSONMIND_COMPUTE__ENGINE": SIMULATED,
        "JETSONMIND_COMPUTE__SIMULATOR__PROMPT_TOKEN_US": str(options.prompt_token_us),
        "JETSONMIND_COMPUTE__SIMULATOR__OUTPUT_TOKEN_US": str(options.output_token_us),
    }


def scaling(cluster, n, options):
    """The two rows for n nodes: load through node 1's gateway, and spread over every gateway."""
    names = [f"n{i + 1}" for i in range(n)]
    per_node = options.concurrency
    env = {
        **NODE_ENV,
        **simulator_env(options),
        "JETSONMIND_COMPUTE__PARALLEL": str(per_node),
        # All n x per_node callers may be at one gateway at once.
        "JETSONMIND_HTTP__MAX_CONCURRENT_REQUESTS": str(max(64, 2 * n * per_node)),
    }
    cluster.start(names, env)
    try:
        for name in names:
            asyncio.run(wait_for_replicas(cluster.url(name), names))
        idle = dict(zip(("idle_nodes_cpu_cores", "idle_nats_cpu_cores", "idle_machine_cpu_cores",
                         "idle_node1_cpu_cores"),
                        cluster.cpu_cores(options.idle_seconds)))
        callers = range(n * per_node)
        rows = []
        for mode, url_of in [("node 1", lambda _: cluster.url(names[0])),
                             ("all nodes", lambda i: cluster.url(names[i % n]))]:
            print(f"  {n} nodes, load via {mode} ...", flush=True)
            rows.append({"nodes": n, "via": mode, **run_load(cluster, [url_of(i) for i in callers], options), **idle})
        return rows
    finally:
        cluster.stop()


async def alternate(local_url, remote_url, remote_node, body, calls):
    """`calls` calls each way, one at a time, taking turns: (local ms, remote ms, engines)."""
    local, remote = Connection(local_url), Connection(remote_url)
    timings = {"local": [], "remote": []}
    engines = set()
    try:
        for i in range(HOP_WARMUP_CALLS + calls):
            for way, connection in (("local", local), ("remote", remote)):
                latency, served = await timed_call(connection, body)
                if served.node != remote_node or (served.replica == "compute-local") != (way == "local"):
                    raise CallFailed(f"a {way} call was served by {served.replica} on {served.node}")
                if i >= HOP_WARMUP_CALLS:
                    timings[way].append(latency)
                    engines.add(served.engine)
    finally:
        local.close()
        remote.close()
    return timings["local"], timings["remote"], engines


def local_vs_remote(cluster, prefix, engine_env, max_tokens, calls):
    """Node <prefix>2 with a compute replica, node <prefix>1 a gateway without one: the same call
    served in-process (through <prefix>2's gateway) and over NATS (through <prefix>1's)."""
    gateway, compute = f"{prefix}1", f"{prefix}2"
    env = {**NODE_ENV, **engine_env}
    cluster.start([compute], env)
    try:
        cluster.start([gateway], {**env, "JETSONMIND_CONTROL__LOCAL_REPLICA": "false"})
        for name in (gateway, compute):
            asyncio.run(wait_for_replicas(cluster.url(name), [compute]))
        local, remote, engines = asyncio.run(
            alternate(cluster.url(compute), cluster.url(gateway), compute, generate_call(max_tokens), calls)
        )
    finally:
        cluster.stop()
    row = {"engine": ", ".join(sorted(engines)), "max_tokens": max_tokens, "calls_each_way": calls}
    for way, values in (("local", local), ("remote", remote)):
        row[f"{way}_p50_ms"], row[f"{way}_p99_ms"] = percentile(values, 50), percentile(values, 99)
    row["added_p50_ms"] = row["remote_p50_ms"] - row["local_p50_ms"]
    row["added_p99_ms"] = row["remote_p99_ms"] - row["local_p99_ms"]
    return row


def with_efficiency(rows):
    """Adds T(N) / (N x T(1)) to each row, against the 1-node row of the same mode."""
    single = {row["via"]: row["calls_per_second"] for row in rows if row["nodes"] == 1}
    for row in rows:
        base = single.get(row["via"])
        row["efficiency"] = row["calls_per_second"] / (row["nodes"] * base) if base else None
    return rows


# -- the report --------------------------------------------------------------------


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def scaling_table(rows, options):
    lines = [
        f"Scaling: {options.concurrency} callers per node, text_generate with max_tokens {options.max_tokens}, "
        f"simulated {options.prompt_token_us} us per prompt token and {options.output_token_us} us per "
        f"output token; {options.seconds} s counted after {options.warmup} s of warm-up",
        "",
        "| nodes | load via | engine | callers | calls | errors | calls/s | efficiency | p50 ms | p99 ms "
        "| calls per node | CPU: client | nodes (idle) | node 1 | nats (idle) | ms per call | machine |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        by_node = list(r["calls_by_node"].values()) or [0]
        lines.append(
            f"| {r['nodes']} | {r['via']} | {r['engine']} | {r['concurrency']} | {r['calls']} | {r['errors']} "
            f"| {fmt(r['calls_per_second'])} | {fmt(r['efficiency'], 3)} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
            f"| {min(by_node)}-{max(by_node)} | {fmt(r['client_cpu_cores'], 2)} "
            f"| {fmt(r['nodes_cpu_cores'], 2)} ({fmt(r['idle_nodes_cpu_cores'], 2)}) "
            f"| {fmt(r['node1_cpu_cores'], 2)} "
            f"| {fmt(r['nats_cpu_cores'], 2)} ({fmt(r['idle_nats_cpu_cores'], 2)}) "
            f"| {fmt(r['servers_cpu_ms_per_call'], 2)} | {fmt(r['machine_cpu_cores'], 2)} of {r['machine_cores']} |"
        )
    lines += [
        "",
        "CPU in cores over a run (warm-up included): client = this script; nodes = the jetsonmind processes "
        "(idle before the load in brackets), node 1 among them; nats = the nats-servers; "
        "ms per call = nodes + nats CPU per call; machine = every process on the machine, anyone else's too.",
    ]
    return lines


def latency_table(hops):
    lines = [
        "Served in-process vs over NATS by another node (one call at a time, taking turns)",
        "",
        "| measurement | engine | max_tokens | calls each | local p50 | local p99 | remote p50 | remote p99 "
        "| added p50 | added p99 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, h in hops:
        lines.append(
            f"| {label} | {h['engine']} | {h['max_tokens']} | {h['calls_each_way']} | {fmt(h['local_p50_ms'], 2)} "
            f"| {fmt(h['local_p99_ms'], 2)} | {fmt(h['remote_p50_ms'], 2)} | {fmt(h['remote_p99_ms'], 2)} "
            f"| {fmt(h['added_p50_ms'], 2)} | {fmt(h['added_p99_ms'], 2)} |"
        )
    return lines


def goals(rows, hop, real):
    """Each goal of issue 10 with what was measured and whether it was met."""
    largest = max((r["nodes"] for r in rows), default=None)
    found = []
    for r in rows:
        if r["nodes"] == largest and r["efficiency"] is not None:
            found.append({"goal": f"efficiency >= {EFFICIENCY_GOAL} at {largest} nodes, load via {r['via']}",
                          "measured": round(r["efficiency"], 3), "met": r["efficiency"] >= EFFICIENCY_GOAL})
    if hop:
        found.append({"goal": f"the NATS hop adds < {HOP_GOAL_MS} ms p99 ({hop['engine']})",
                      "measured": round(hop["added_p99_ms"], 2), "met": hop["added_p99_ms"] < HOP_GOAL_MS})
    if real:
        found.append({"goal": f"cluster latency p99 < {KPI_MS:.0f} ms, real generation of {real['max_tokens']} "
                              f"tokens served by another node ({real['engine']})",
                      "measured": round(real["remote_p99_ms"], 1), "met": real["remote_p99_ms"] < KPI_MS})
    return found


def report(results, options):
    lines = ["", *scaling_table(results["scaling"], options), ""]
    hops = [(label, results[key]) for label, key in (("NATS hop", "hop"), ("cluster KPI", "real")) if results[key]]
    if hops:
        lines += [*latency_table(hops), ""]
    for goal in results["goals"]:
        lines.append(f"- {goal['goal']}: {goal['measured']} -> {'met' if goal['met'] else 'MISSED'}")
    print("\n".join(lines))


# -- main -----------------------------------------------------------------------------


def node_counts(text):
    counts = [int(n) for n in text.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of node counts, each at least 1")
    return counts


def parse_options():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=node_counts, default=[1, 2, 4, 8, 16], help="node counts, e.g. 1,2,4")
    parser.add_argument("--seconds", type=float, default=10, help="counted load per run")
    parser.add_argument("--warmup", type=float, default=2, help="load before counting, per run")
    parser.add_argument("--concurrency", type=int, default=4, help="callers per node (= compute.parallel)")
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per simulated call")
    parser.add_argument("--prompt-token-us", type=int, default=100)
    parser.add_argument("--output-token-us", type=int, default=3000)
    parser.add_argument("--hop-calls", type=int, default=300, help="simulated calls each way for the NATS hop")
    parser.add_argument("--real-calls", type=int, default=50, help="real generations each way; 0: skip")
    parser.add_argument("--real-max-tokens", type=int, default=16)
    parser.add_argument("--nats-servers", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=2, help="CPU of the idle nodes measured this long")
    parser.add_argument("--json", type=Path, help="write the results here as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) and say where")
    options = parser.parse_args()
    if options.concurrency < 1 or options.seconds <= 0 or options.hop_calls < 1:
        parser.error("--concurrency, --seconds and --hop-calls must be positive")
    if options.json and not options.json.parent.is_dir():
        parser.error(f"--json: no directory {options.json.parent}")
    return options


def measure(options, workdir):
    results = {"scaling": [], "hop": None, "real": None}
    with NatsCluster(workdir / "nats", n=options.nats_servers) as nats:
        cluster = Cluster(nats, workdir / "nodes")
        try:
            for n in options.nodes:
                results["scaling"] += scaling(cluster, n, options)
            print("  the NATS hop, simulated ...", flush=True)
            results["hop"] = local_vs_remote(cluster, "h", simulator_env(options), options.max_tokens,
                                             options.hop_calls)
            if options.real_calls:
                print("  the cluster KPI, real generation ...", flush=True)
                results["real"] = local_vs_remote(cluster, "r", {}, options.real_max_tokens, options.real_calls)
        finally:
            cluster.stop()
    with_efficiency(results["scaling"])
    results["goals"] = goals(results["scaling"], results["hop"], results["real"])
    return results


def stop_on_signals():
    """Ctrl-C, SIGTERM and a closed terminal unwind, so every process is stopped on the way out (SIGINT
    too when started in the background, where it would be ignored)."""
    def unwind(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, unwind)


def measure_or_exit(name, measure, options, workdir):
    """`measure(options, workdir)`'s results; a failed call or cluster step, or a signal, ends the
    benchmark `name` saying why (every process it started is stopped by then)."""
    try:
        return measure(options, workdir)
    except (pytest.fail.Exception, CallFailed) as failure:
        sys.exit(f"{name}: {failure}")
    except KeyboardInterrupt as interrupted:
        sys.exit(f"{name}: interrupted ({interrupted}); every process stopped")


def main():
    options = parse_options()
    require_binary()
    stop_on_signals()
    settings = {k: v for k, v in vars(options).items() if k not in ("json", "keep")}
    prefix = "jetsonmind-cluster-bench-"
    if options.keep:
        workdir = nullcontext(tempfile.mkdtemp(prefix=prefix))
    else:
        workdir = tempfile.TemporaryDirectory(prefix=prefix)
    with workdir as tmp:
        if options.keep:
            print(f"logs under {tmp}", flush=True)
        results = measure_or_exit("cluster_scaling", measure, options, Path(tmp))
    report(results, options)
    if options.json:
        options.json.write_text(json.dumps({"settings": settings, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
