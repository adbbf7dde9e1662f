#!/usr/bin/env python3
"""The hybrid tier: S edge sites of K nodes each, leafed to a cloud hub, and what federation costs.

  .venv/bin/python bench/hybrid_tier.py [--sites 16] [--nodes 4] [--cloud-nodes 1] [--callers 1] [--parallel 2]
                                        [--seconds 10] [--hop-calls 100] [--no-wan] [--json bench/results/hybrid_tier.json]

Every node runs the inference simulator (`compute.engine = "simulated"`: each call sleeps per prompt
and output token, no model, no CPU), so that 2 cores can hold dozens of nodes. A site is a JetsonMind
cluster (`cluster.name` = its JetStream domain, site1, site2...) on a nats-server of its own, a leaf
node of the hub (domain `hub`), as tests/e2e/natscluster.py's NatsHybrid builds it; the cloud nodes
are `jetsonmind serve --cluster <hub>` in cluster `cloud`, each a replica of tier cloud for every site.

1. Throughput efficiency. One topology of S sites for the whole phase. Site 1's K nodes alone first
   (the other sites' nats-servers are up and idle): --callers per node, each a keep-alive HTTP connection
   calling text_generate back to back through that node's gateway, for --seconds: T(1). Each node has
   --parallel slots (2 per caller by default): routing may send two of a site's gateways' calls to one
   replica at once, and with one slot the second would wait a whole call (with --parallel 1, T(1) falls
   to about half and swings from run to run). Then every site's nodes, the same load at each site at
   once: T(S). Efficiency = T(S) / (S x T(1)). The load
   stays under each site's utilization ceiling, so calls are served at the site; each row says how
   many the cloud served anyway.
2. The tier hop. Two sites and a cloud node: site1 has a gateway without a compute replica of its own
   (`control.local_replica = false`) and a compute node; site2 only such a gateway, so its calls go to
   the cloud ("the site has no replica"). The same call, one at a time, taking turns through site1's
   gateway (served by another node of the site: tier site) and site2's (served in the cloud: tier
   cloud, across the leaf link and the hub). Both ways are one NATS hop from the gateway to a node
   that computes; added = cloud - site, p50 and p95, against the hybrid KPI (< 500 ms). Without a WAN,
   then (root only; --no-wan skips it) over an emulated WAN per uplink: 25 ms each way, +/- 2 ms, 1%
   of frames lost.
3. Memory: the resident set (VmRSS) of every jetsonmind node and nats-server, read while all of
   phase 1's nodes run, just after their load: sum and mean per node.

Before it starts sites 2..S, it checks that their nodes fit in the memory available (projected from
site 1's nodes, at most --memory-share of MemAvailable); when they do not, it runs as many sites as fit
and says so. The caller is cluster_scaling.py's asyncio HTTP client (one connection per caller, no MCP
session). Everything lives in a temporary directory; every process (and, with the WAN, every network
namespace) is stopped at the end, on an error or on Ctrl-C. Needs ./setup.sh and `cargo build --release`.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BINARY, ROOT, percentile, require_binary
from cluster_scaling import (
    NODE_ENV,
    CallFailed,
    Connection,
    cpu_seconds,
    fmt,
    generate_call,
    load,
    machine_busy_seconds,
    measure_or_exit,
    simulator_env,
    stop_on_signals,
    tool_call,
)

import pytest  # noqa: E402  (cluster_scaling made tests/e2e importable)
from conftest import start_nodes, stop_serve  # noqa: E402
from natscluster import NatsHybrid, Wan  # noqa: E402

KPI_MS = 500.0
WAN = Wan(delay_ms=25, jitter_ms=2, loss=0.01)
HOP_WARMUP_CALLS = 5
READY_TIMEOUT_S = 120
CLOUD = "cloud"
DEFAULT_JSON = ROOT / "bench" / "results" / "hybrid_tier.json"


# -- nodes ---------------------------------------------------------------------------


def node_env(options, **more):
    return {
        **NODE_ENV,
        **simulator_env(options),
        "JETSONMIND_COMPUTE__PARALLEL": str(options.parallel),
        # Sites learn the cloud's tools without waiting for a cached list to expire.
        "JETSONMIND_MCP__LIST_TTL_MS": "0",
        **more,
    }


def site_env(options, hybrid, k, **more):
    return node_env(
        options, JETSONMIND_CLUSTER__NAME=hybrid.domain(k), JETSONMIND_HYBRID__HUB_DOMAIN=hybrid.HUB_DOMAIN, **more
    )


def site_node_names(k, count):
    return [f"s{k + 1}n{i + 1}" for i in range(count)]


def cloud_node_names(count):
    return [f"c{i + 1}" for i in range(count)]


class Nodes:
    """The jetsonmind nodes running now ({name: Served}), each stopped by `stop`, even after a failure."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.running = {}

    def start(self, nats, names, env):
        self.running.update(start_nodes(BINARY, self.workdir, nats, names, env))

    def url(self, name):
        return self.running[name].url

    def pids(self, names=None):
        return [node.process.pid for name, node in self.running.items() if names is None or name in names]

    def stop(self):
        nodes, self.running = list(self.running.values()), {}
        for node in nodes:
            if node.process.poll() is None:
                try:
                    stop_serve(node)
                except pytest.fail.Exception:
                    print(f"warning: {node.log} did not stop on SIGTERM (killed)", file=sys.stderr)


async def replicas_up(url):
    """The nodes whose compute replicas the gateway at `url` has up, and whether it offers text_generate."""
    connection = Connection(url)
    try:
        answer = await connection.post(tool_call("monitor_health", {}))
        up = {r.get("node") for r in answer["result"]["structuredContent"]["replicas"] if r["up"]}
        tools = await connection.post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode())
        return up, any(t["name"] == "text_generate" for t in tools["result"]["tools"])
    finally:
        connection.close()


def wait_until_sees(nodes, gateways, expected):
    """Until each gateway has the replicas of exactly `expected` (node names) up and offers text_generate."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    for name in gateways:
        seen = None
        while True:
            try:
                seen, offered = asyncio.run(replicas_up(nodes.url(name)))
                if seen == set(expected) and offered:
                    break
            except (CallFailed, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise CallFailed(f"{name}: replicas of {sorted(expected)} not all up after {READY_TIMEOUT_S} s "
                                 f"(up: {seen})")
            time.sleep(0.3)


# -- memory ----------------------------------------------------------------------------


def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mem_available_mib():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def nats_pids(hybrid):
    return [s.process.pid for c in [hybrid.hub, *hybrid.sites] for s in c.servers if s.process is not None]


def memory(nodes, hybrid, site_names, cloud_names):
    site = [rss_mib(p) for p in nodes.pids(site_names)]
    cloud = [rss_mib(p) for p in nodes.pids(cloud_names)]
    nats = [rss_mib(p) for p in nats_pids(hybrid)]
    return {
        "site_nodes": len(site), "site_nodes_rss_mib_sum": sum(site),
        "site_node_rss_mib_mean": sum(site) / len(site) if site else None,
        "site_node_rss_mib_max": max(site, default=None),
        "cloud_nodes": len(cloud), "cloud_node_rss_mib_mean": sum(cloud) / len(cloud) if cloud else None,
        "nats_servers": len(nats), "nats_rss_mib_sum": sum(nats),
        "nats_rss_mib_mean": sum(nats) / len(nats) if nats else None,
        "total_rss_mib": sum(site) + sum(cloud) + sum(nats),
        "mem_available_mib_after": mem_available_mib(),
    }


def sites_that_fit(options, per_node_mib, per_nats_mib):
    """How many sites (of --sites) fit in --memory-share of the memory available now, site 1 running."""
    per_site = options.nodes * per_node_mib + per_nats_mib
    budget = options.memory_share * mem_available_mib()
    return max(1, min(options.sites, 1 + int(budget // per_site))), per_site, budget


# -- phase 1: throughput -------------------------------------------------------------------


def throughput(nodes, hybrid, sites, names_of, cloud_names, options):
    """The load at `sites` (indices) at once: one row."""
    urls = [nodes.url(name) for k in sites for name in names_of[k] for _ in range(options.callers)]
    pids = nodes.pids() + nats_pids(hybrid)
    before, machine_before, client_before = cpu_seconds(pids), machine_busy_seconds(), time.process_time()
    wall_before = time.monotonic()
    latencies, served_by, errors = asyncio.run(
        load(urls, generate_call(options.max_tokens), options.warmup, options.seconds)
    )
    wall = time.monotonic() - wall_before
    calls_per_second = len(latencies) / options.seconds
    by_cloud = sum(calls for (_, node), calls in served_by.items() if node in cloud_names)
    by_node = [served_by.get(key, 0) for key in served_by if key[1] not in cloud_names] or [0]
    return {
        "sites": len(sites),
        "nodes": sum(len(names_of[k]) for k in sites),
        "callers": len(urls),
        "engine": ", ".join(sorted({engine for engine, _ in served_by})) or "none answered",
        "calls": len(latencies),
        "served_in_cloud": by_cloud,
        # Every site node should serve about as many calls: a spread shows routing piling calls on some.
        "calls_per_site_node_min_max": [min(by_node), max(by_node)],
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "calls_per_second": calls_per_second,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p95_ms": percentile(latencies, 95) if latencies else None,
        "servers_cpu_cores": (cpu_seconds(pids) - before) / wall,
        "client_cpu_cores": (time.process_time() - client_before) / wall,
        "machine_cpu_cores": (machine_busy_seconds() - machine_before) / wall,
    }


def phase(label, started):
    print(f"  [{time.monotonic() - started:6.1f} s] {label}", flush=True)


def federation(options, workdir, started):
    """Phase 1 and the memory: rows for site 1 alone and for every site that fits, and the memory."""
    results = {"requested_sites": options.sites, "nodes_per_site": options.nodes}
    cloud_names = cloud_node_names(options.cloud_nodes)
    phase(f"hub + {options.sites} site nats-servers ...", started)
    with NatsHybrid(workdir / "nats", sites=options.sites) as hybrid:
        nodes = Nodes(workdir / "nodes")
        try:
            phase(f"{options.cloud_nodes} cloud node(s) and site 1's {options.nodes} nodes ...", started)
            nodes.start(hybrid.hub, cloud_names, node_env(options, JETSONMIND_CLUSTER__NAME=CLOUD))
            names_of = {0: site_node_names(0, options.nodes)}
            nodes.start(hybrid.sites[0], names_of[0], site_env(options, hybrid, 0))
            wait_until_sees(nodes, names_of[0], names_of[0] + cloud_names)
            phase("load at site 1 alone ...", started)
            alone = throughput(nodes, hybrid, [0], names_of, cloud_names, options)
            one_site = memory(nodes, hybrid, names_of[0], cloud_names)
            fit, per_site, budget = sites_that_fit(
                options, one_site["site_node_rss_mib_mean"], one_site["nats_rss_mib_mean"]
            )
            results["fit"] = {"sites": fit, "projected_mib_per_site": per_site, "memory_budget_mib": budget}
            if fit < options.sites:
                print(f"  only {fit} of {options.sites} sites fit in {budget:.0f} MiB "
                      f"({per_site:.0f} MiB per site projected): running {fit}", flush=True)
            for k in range(1, fit):
                phase(f"site {k + 1}'s {options.nodes} nodes ...", started)
                names_of[k] = site_node_names(k, options.nodes)
                nodes.start(hybrid.sites[k], names_of[k], site_env(options, hybrid, k))
            for k in range(1, fit):
                wait_until_sees(nodes, names_of[k], names_of[k] + cloud_names)
            phase(f"load at all {fit} sites at once ...", started)
            together = throughput(nodes, hybrid, list(range(fit)), names_of, cloud_names, options)
            results["memory"] = memory(nodes, hybrid, [n for k in names_of for n in names_of[k]], cloud_names)
        finally:
            phase("stopping every node ...", started)
            nodes.stop()
    alone["efficiency"] = 1.0
    base = alone["calls_per_second"]
    together["efficiency"] = together["calls_per_second"] / (together["sites"] * base) if base else None
    results["throughput"] = [alone, together]
    return results


# -- phase 2: the tier hop ---------------------------------------------------------------------


def last_hop(answer):
    """(tier, node) of the route's last hop of a successful call."""
    result = answer.get("result")
    if result is None or result.get("isError"):
        raise CallFailed(json.dumps(answer.get("error") or result)[:300])
    hop = ((result.get("_meta") or {}).get("jetsonmind/route") or [{}])[-1]
    return hop.get("tier"), hop.get("node")


async def take_turns(site_url, cloud_url, body, calls):
    """`calls` calls each way, one at a time, taking turns: {way: [ms]}, checking where each was served."""
    connections = {"site": Connection(site_url), "cloud": Connection(cloud_url)}
    timings = {"site": [], "cloud": []}
    try:
        for i in range(HOP_WARMUP_CALLS + calls):
            for way, connection in connections.items():
                started = time.perf_counter()
                tier, node = last_hop(await connection.post(body))
                latency = (time.perf_counter() - started) * 1000
                if tier != way:
                    raise CallFailed(f"a call meant for tier {way} was served at tier {tier} by {node}")
                if i >= HOP_WARMUP_CALLS:
                    timings[way].append(latency)
    finally:
        for connection in connections.values():
            connection.close()
    return timings


def tier_hop(options, workdir, wan):
    """Site vs cloud, the same call one at a time, over `wan` (None: loopback uplinks): one row."""
    cloud, compute, site_gateway, lone_gateway = "c1", "s1c", "s1g", "s2g"
    gateway_only = {"JETSONMIND_CONTROL__LOCAL_REPLICA": "false"}
    with NatsHybrid(workdir, sites=2, wan=wan) as hybrid:
        nodes = Nodes(workdir / "nodes")
        try:
            nodes.start(hybrid.hub, [cloud], node_env(options, JETSONMIND_CLUSTER__NAME=CLOUD))
            nodes.start(hybrid.sites[0], [compute], site_env(options, hybrid, 0))
            nodes.start(hybrid.sites[0], [site_gateway], site_env(options, hybrid, 0, **gateway_only))
            nodes.start(hybrid.sites[1], [lone_gateway], site_env(options, hybrid, 1, **gateway_only))
            wait_until_sees(nodes, [site_gateway], [compute, cloud])
            wait_until_sees(nodes, [lone_gateway], [cloud])
            timings = asyncio.run(take_turns(nodes.url(site_gateway), nodes.url(lone_gateway),
                                             generate_call(options.hop_max_tokens), options.hop_calls))
        finally:
            nodes.stop()
    row = {"wan": None if wan is None else vars(wan), "calls_each_way": options.hop_calls,
           "max_tokens": options.hop_max_tokens}
    for way, values in timings.items():
        row[f"{way}_p50_ms"], row[f"{way}_p95_ms"] = percentile(values, 50), percentile(values, 95)
    # Per call pair, taken in turn, so that the machine's load at that moment weighs on both.
    added = [c - s for s, c in zip(timings["site"], timings["cloud"])]
    row["added_p50_ms"], row["added_p95_ms"] = percentile(added, 50), percentile(added, 95)
    row["kpi_met"] = row["added_p95_ms"] < KPI_MS
    return row


# -- the report ----------------------------------------------------------------------------------


def report(results, options):
    lines = [
        "",
        f"Throughput: {options.callers} caller(s) per node through its own gateway (compute.parallel "
        f"{options.parallel}), text_generate max_tokens {options.max_tokens}, simulated "
        f"{options.prompt_token_us} us per prompt token, {options.output_token_us} us per output token; "
        f"{options.seconds} s counted after {options.warmup} s; {options.cloud_nodes} cloud node(s)",
        "",
        "| sites | nodes | callers | engine | calls | per node | in cloud | errors | calls/s | efficiency | p50 ms | p95 ms "
        "| CPU: servers | client | machine |",
        "|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        lines.append(
            f"| {r['sites']} | {r['nodes']} | {r['callers']} | {r['engine']} | {r['calls']} "
            f"| {'-'.join(map(str, r['calls_per_site_node_min_max']))} | {r['served_in_cloud']} "
            f"| {r['errors']} | {fmt(r['calls_per_second'])} | {fmt(r['efficiency'], 3)} | {fmt(r['p50_ms'])} "
            f"| {fmt(r['p95_ms'])} | {fmt(r['servers_cpu_cores'], 2)} | {fmt(r['client_cpu_cores'], 2)} "
            f"| {fmt(r['machine_cpu_cores'], 2)} of {os.cpu_count()} |"
        )
    fit = results["fit"]
    if fit["sites"] < results["requested_sites"]:
        lines.append(f"\nOnly {fit['sites']} of {results['requested_sites']} sites fit in memory "
                     f"({fit['projected_mib_per_site']:.0f} MiB per site, budget {fit['memory_budget_mib']:.0f} MiB).")
    m = results["memory"]
    lines += [
        "",
        f"Memory (VmRSS, all {fit['sites']} sites running): {m['site_nodes']} site nodes "
        f"{fmt(m['site_nodes_rss_mib_sum'], 0)} MiB in all, {fmt(m['site_node_rss_mib_mean'])} MiB mean, "
        f"{fmt(m['site_node_rss_mib_max'])} max; cloud node mean {fmt(m['cloud_node_rss_mib_mean'])} MiB; "
        f"{m['nats_servers']} nats-servers {fmt(m['nats_rss_mib_sum'], 0)} MiB "
        f"({fmt(m['nats_rss_mib_mean'])} mean); everything {fmt(m['total_rss_mib'], 0)} MiB",
        "",
        "The tier hop: the same call (text_generate max_tokens "
        f"{options.hop_max_tokens}), one at a time, taking turns, served by another node of the site vs by "
        "the cloud node; added = cloud - site per pair of calls",
        "",
        "| uplink | calls each | site p50 | site p95 | cloud p50 | cloud p95 | added p50 | added p95 | KPI < 500 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for h in results["hops"]:
        wan = h["wan"]
        uplink = "loopback" if wan is None else (
            f"WAN {wan['delay_ms']} ms each way +/-{wan['jitter_ms']}, {wan['loss'] * 100:.0f}% loss")
        lines.append(
            f"| {uplink} | {h['calls_each_way']} | {fmt(h['site_p50_ms'], 2)} | {fmt(h['site_p95_ms'], 2)} "
            f"| {fmt(h['cloud_p50_ms'], 2)} | {fmt(h['cloud_p95_ms'], 2)} | {fmt(h['added_p50_ms'], 2)} "
            f"| {fmt(h['added_p95_ms'], 2)} | {'met' if h['kpi_met'] else 'MISSED'} |"
        )
    if results.get("wan_skipped"):
        lines.append(f"\nWAN not measured: {results['wan_skipped']}")
    lines.append(f"\nPhases: {', '.join(f'{k} {v:.0f} s' for k, v in results['phase_seconds'].items())}")
    print("\n".join(lines))


# -- main -------------------------------------------------------------------------------------------


def parse_options():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=4, help="nodes per site")
    parser.add_argument("--cloud-nodes", type=int, default=1)
    parser.add_argument("--callers", type=int, default=1, help="callers per node, each through its gateway")
    parser.add_argument("--parallel", type=int, default=2,
                        help="compute.parallel per node (room for two of a site's gateways picking one replica at once)")
    parser.add_argument("--seconds", type=float, default=10, help="counted load per throughput row")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per simulated call")
    parser.add_argument("--prompt-token-us", type=int, default=100)
    parser.add_argument("--output-token-us", type=int, default=10000)
    parser.add_argument("--hop-calls", type=int, default=100, help="calls each way for the tier hop")
    parser.add_argument("--hop-max-tokens", type=int, default=4,
                        help="output tokens per tier-hop call (short: the hop adds to the call, whatever its length)")
    parser.add_argument("--no-wan", action="store_true", help="skip the tier hop over the emulated WAN")
    parser.add_argument("--memory-share", type=float, default=0.7,
                        help="share of MemAvailable the sites beyond the first may take")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="write the results here as JSON too")
    options = parser.parse_args()
    if min(options.sites, options.nodes, options.cloud_nodes, options.callers, options.parallel, options.hop_calls,
           options.max_tokens, options.hop_max_tokens) < 1:
        parser.error("--sites, --nodes, --cloud-nodes, --callers, --parallel, --hop-calls and the max tokens "
                     "must be at least 1")
    if options.seconds <= 0 or not 0 < options.memory_share <= 1:
        parser.error("--seconds must be positive, --memory-share in (0, 1]")
    return options


def wan_unavailable(options):
    if options.no_wan:
        return "--no-wan"
    if os.geteuid() != 0:
        return "the emulated WAN needs root (network namespaces)"
    return None


def measure(options, workdir):
    started = time.monotonic()
    seconds = {}
    results = federation(options, workdir / "federation", started)
    seconds["federation"] = time.monotonic() - started
    phase("the tier hop over loopback uplinks ...", started)
    results["hops"] = [tier_hop(options, workdir / "hop", None)]
    seconds["hop"] = time.monotonic() - started - sum(seconds.values())
    results["wan_skipped"] = wan_unavailable(options)
    if results["wan_skipped"] is None:
        phase("the tier hop over the emulated WAN ...", started)
        results["hops"].append(tier_hop(options, workdir / "hop-wan", WAN))
        seconds["hop over WAN"] = time.monotonic() - started - sum(seconds.values())
    results["phase_seconds"] = seconds
    return results


def main():
    options = parse_options()
    require_binary()
    stop_on_signals()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()}
    with tempfile.TemporaryDirectory(prefix="jetsonmind-hybrid-bench-") as tmp:
        results = measure_or_exit("hybrid_tier", measure, options, Path(tmp))
    report(results, options)
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps({"settings": settings, **results}, indent=2) + "\n")
    print(f"\nresults: {options.json}")


if __name__ == "__main__":
    main()
