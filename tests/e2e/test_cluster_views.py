"""The cluster's views: three nats-servers (one JetStream cluster) and three `jetsonmind serve --cluster`
nodes, driven by the official Python MCP SDK. Each node publishes its metrics and analytics to the
cluster's telemetry stream, so a real text_generate at node 1 shows in the analytics read at node 3,
and the metrics read at node 2 list every node. `jetsonmind cluster status` lists the nodes Ready with
their replicas (as JSON and as a table), and a node killed with SIGKILL leaves it; NATS that cannot be
reached is a clear error."""

import json
import os
import signal
import subprocess

import anyio
import pytest
from mcp import Client

from conftest import NO_CACHE, eventually, read_json, running_nodes
from natscluster import http_get

pytestmark = pytest.mark.anyio

NODES = ["node1", "node2", "node3"]
# Snapshots every 300 ms, so a change reaches the other nodes in a test's time.
ENV = {**NO_CACHE, "JETSONMIND_CLUSTER__TELEMETRY_INTERVAL_MS": "300"}


@pytest.fixture
def three_nodes(binary, tmp_path, nats_cluster):
    with running_nodes(binary, tmp_path, nats_cluster, NODES, ENV) as nodes:
        yield nodes, nats_cluster


def status(binary, tmp_path, urls, *args, env=None):
    """`jetsonmind cluster status --cluster URLS ARGS` (with `env` added): (exit code, stdout, stderr)."""
    command = [str(binary), "--data-dir", str(tmp_path / "cli"), "cluster", "status", "--cluster", urls, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


def status_json(binary, tmp_path, urls, env=None):
    code, out, err = status(binary, tmp_path, urls, "--json", env=env)
    assert code == 0, err
    return json.loads(out)


async def test_a_call_at_one_node_shows_in_the_analytics_of_another_and_metrics_list_every_node(three_nodes):
    nodes, _ = three_nodes
    async with Client(nodes["node1"].url, mode="auto") as client:
        prompt = {"prompt": "What do bees make?", "max_tokens": 4, "temperature": 0}
        result = await client.call_tool("text_generate", prompt)
        assert not result.is_error, result.content

    def node1_generated(analytics):
        tools = analytics.get("cluster", {}).get("nodes", {}).get("node1", {}).get("tools", [])
        return [t for t in tools if t["tool"] == "text_generate" and t["calls"] >= 1]

    async with Client(nodes["node3"].url, mode="auto") as client:

        async def node1_call_seen():
            analytics = await read_json(client, "jetson://performance/analytics")
            return node1_generated(analytics) and analytics

        analytics = await eventually("node1's call at node3", node1_call_seen)
        assert isinstance(analytics["series"], list), "node3's own analytics stay"
        totals = [t for t in analytics["cluster"]["totals"]["tools"] if t["tool"] == "text_generate"]
        assert sum(t["calls"] for t in totals) >= 1, analytics["cluster"]["totals"]

    async with Client(nodes["node2"].url, mode="auto") as client:

        async def every_node_listed():
            metrics = await read_json(client, "jetson://system/metrics")
            return set(metrics.get("cluster", {}).get("nodes", {})) == set(NODES) and metrics

        metrics = await eventually("all three nodes in node2's metrics", every_node_listed)
        assert metrics["cpu"]["cores"] >= 1, "node2's own metrics stay"
        # The web dashboard of any node's gateway shows the whole cluster (auth is off on loopback).
        status, overview = http_get(nodes["node2"].url.removesuffix("/mcp") + "/ui/overview", timeout=10)
        assert status == 200 and all(f"<td>{node}</td>" in overview for node in NODES), overview
        cluster = metrics["cluster"]
        assert cluster["totals"]["nodes"] == 3
        each = [part["metrics"]["memory"]["total_bytes"] for part in cluster["nodes"].values()]
        assert all(each) and cluster["totals"]["memory_total_bytes"] == sum(each), cluster["totals"]


async def test_cluster_status_lists_the_nodes_and_drops_one_killed(binary, tmp_path, three_nodes):
    nodes, nats = three_nodes

    async def all_ready():
        found = await anyio.to_thread.run_sync(status_json, binary, tmp_path, nats.urls)
        # Ready, with telemetry, once each replica has had its first health check.
        ready = [
            n["node"]
            for n in found["nodes"]
            if n["status"] == "Ready" and n["telemetry"] and n["replicas_healthy"] == n["replicas_total"]
        ]
        return sorted(ready) == NODES and found

    found = await eventually("three nodes Ready", all_ready)
    for node in found["nodes"]:
        local = [r for r in node["replicas"] if r["name"] == "compute-local"]
        assert local and local[0]["up"] and local[0]["node"] == node["node"], node["replicas"]
        assert "compute" in node["servers"] and node["memory_total_bytes"] > 0, node
    assert found["totals"]["metrics"]["nodes"] == 3

    code, table, err = await anyio.to_thread.run_sync(status, binary, tmp_path, nats.urls)
    assert code == 0, err
    header, *rows = table.splitlines()
    assert header.split()[:5] == ["NODE", "STATUS", "AGE", "SERVERS", "REPLICAS"], table
    for name in NODES:
        row = next(r for r in rows if r.startswith(name + " "))
        assert row.split()[1] == "Ready", table

    nodes["node2"].process.send_signal(signal.SIGKILL)
    nodes["node2"].process.wait()

    async def node2_gone():
        found = await anyio.to_thread.run_sync(status_json, binary, tmp_path, nats.urls)
        by_name = {n["node"]: n["status"] for n in found["nodes"]}
        return by_name.get("node2", "NotReady") == "NotReady" and by_name

    by_name = await eventually("node2 leaving the status", node2_gone)
    assert by_name["node1"] == by_name["node3"] == "Ready", by_name


async def test_unreachable_nats_is_a_clear_error(binary, tmp_path):
    code, out, err = await anyio.to_thread.run_sync(status, binary, tmp_path, "nats://127.0.0.1:1")
    assert code != 0 and not out, out
    assert "cannot connect to NATS at nats://127.0.0.1:1" in err, err
    assert "panicked" not in err, err
