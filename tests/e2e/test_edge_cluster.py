"""The edge cluster: real nats-servers (a 3-server JetStream cluster) and four
`jetsonmind serve --cluster` nodes, driven by the official Python MCP SDK
through node 1's gateway. Every node's compute replica is a replica at every
gateway; calls spread across nodes and say which node served them; a node
killed with SIGKILL mid-stream loses no call; the cluster outlives a NATS
server; a node cut off by a network partition leaves and comes back."""

import signal
import statistics
import time

import anyio
import pytest
from mcp import Client

from conftest import NO_CACHE, node_of, start_cluster_node, start_nodes, stop_serve
from test_cluster import QUESTIONS, wait_for

pytestmark = pytest.mark.anyio

NODES = ["n1", "n2", "n3", "n4"]
# Spread calls by load (the default, affinity, keeps them where the model is loaded), and
# see membership changes at once (the Python client caches lists otherwise).
CLUSTER_ENV = {
    **NO_CACHE,
    "JETSONMIND_CONTROL__STRATEGY": "least_outstanding",
    "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500",
    "JETSONMIND_MCP__LIST_TTL_MS": "0",
    "JETSONMIND_COMPUTE__PARALLEL": "2",
}


@pytest.fixture
def four_nodes(binary, tmp_path, nats_cluster):
    nodes = start_nodes(binary, tmp_path, nats_cluster, NODES, CLUSTER_ENV)
    yield nodes
    for node in nodes.values():
        if node.process.poll() is None:
            stop_serve(node)


def replicas_by_node(state):
    return {r["node"]: r for r in state["replicas"] if r["up"]}


def all_nodes_up(state, names=NODES):
    """Every node's replica is up and has reported its status: a replica is up as soon as it
    connects, and its report is read by the health check after that."""
    reporting = {node for node, replica in replicas_by_node(state).items() if replica["report"]}
    return reporting == set(names)


async def generate(client, i, max_tokens=4):
    question = QUESTIONS[i % len(QUESTIONS)]
    return await client.call_tool("text_generate", {"prompt": question, "max_tokens": max_tokens, "temperature": 0})


async def calls(client, count, at_once, on_result=lambda result, seconds: None):
    """`count` text_generate calls, `at_once` in flight; each result and its latency."""
    results = []
    limit = anyio.Semaphore(at_once)

    async def one(i):
        async with limit:
            started = time.monotonic()
            result = await generate(client, i)
            results.append((result, time.monotonic() - started))
            on_result(result, len(results))

    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(one, i)
    return results


async def serve_until(client, enough, serving=frozenset(), timeout=60):
    """Calls, 8 at once, until the nodes that answered them (with `serving`) satisfy `enough`; those
    nodes. Which node answers is the router's choice, and batched generation lets the nodes already
    serving absorb a burst, so a node that came back is asked for until it answers, not expected among
    a fixed number of calls."""
    serving = set(serving)
    deadline = time.monotonic() + timeout
    while not enough(serving):
        assert time.monotonic() < deadline, f"only {serving} answered within {timeout} s"
        results = await calls(client, 8, at_once=8)
        assert not [r for r, _ in results if r.is_error]
        serving |= {node_of(r) for r, _ in results}
    return serving


async def test_every_gateway_sees_every_node_and_calls_spread_across_them(four_nodes):
    async with Client(four_nodes["n1"].url, mode="auto") as client:
        state = await wait_for(client, "all four nodes' replicas", all_nodes_up)
        n4 = replicas_by_node(state)["n4"]
        assert n4["name"] == "compute@n4" and n4["endpoint"] == "nats: n4/compute", n4
        assert n4["report"]["capacity"] >= 1, n4

        results = await calls(client, 32, at_once=8)
        failures = [r for r, _ in results if r.is_error]
        assert not failures, [r.content for r in failures]
        served = {node_of(r) for r, _ in results}
        assert served == set(NODES), served
        for result, _ in results:
            assert result.structured_content["text"].strip(), result
            hop = result.meta["jetsonmind/route"][-1]
            assert hop["backend"] == "compute"
            assert hop["replica"] == ("compute-local" if hop["node"] == "n1" else f"compute@{hop['node']}")

        # route_request decides over the whole cluster, each replica with its node.
        decision = await client.call_tool("route_request", {"tool": "text_generate", "arguments": {"prompt": "hi"}})
        candidates = decision.structured_content["decision"]["candidates"]
        assert {c["replica"] for c in candidates} >= {"compute-local", "compute@n2", "compute@n3", "compute@n4"}


async def test_a_node_killed_during_a_stream_of_calls_loses_none(four_nodes, capsys):
    victim = four_nodes["n3"]
    killed = anyio.Event()

    def kill_after_some(result, done):
        if done == 50:
            victim.process.send_signal(signal.SIGKILL)
            killed.set()

    async with Client(four_nodes["n1"].url, mode="auto") as client:
        await wait_for(client, "all four nodes' replicas", all_nodes_up)
        results = await calls(client, 240, at_once=8, on_result=kill_after_some)
        assert killed.is_set()
        failures = [r for r, _ in results if r.is_error]
        assert not failures, [r.content for r in failures]
        assert len(results) == 240
        retried = [r for r, _ in results if r.meta["jetsonmind/route"][-1]["attempts"] > 1]
        after = [node_of(r) for r, _ in results[60:]]
        assert "n3" not in after[-100:], "the dead node kept getting calls"
        state = await wait_for(client, "n3 gone", lambda s: "n3" not in replicas_by_node(s))
        assert set(replicas_by_node(state)) == {"n1", "n2", "n4"}

    latencies = sorted(seconds * 1000 for _, seconds in results)
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    with capsys.disabled():
        print(
            f"\n  240 calls, n3 SIGKILLed after 50: none lost, {len(retried)} failed over; "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        )


async def test_the_cluster_outlives_a_nats_server_and_a_restarted_node_rejoins(
    binary, tmp_path, nats_cluster, four_nodes
):
    async with Client(four_nodes["n1"].url, mode="auto") as client:
        await wait_for(client, "all four nodes' replicas", all_nodes_up)
        nats_cluster.kill(0)
        results = await calls(client, 24, at_once=8)
        assert not [r for r, _ in results if r.is_error]
        # Nodes that were on the dead server serve again once reconnected (on a busy machine, possibly
        # after those first calls have all been answered by the others).
        await serve_until(client, lambda nodes: len(nodes) >= 3, {node_of(r) for r, _ in results})

        # A node that goes and comes back is seen going and rejoins, on two NATS servers.
        stop_serve(four_nodes["n4"])
        await wait_for(client, "n4 gone", lambda s: "n4" not in replicas_by_node(s))
        four_nodes["n4"] = start_cluster_node(binary, tmp_path, nats_cluster.urls, "n4", CLUSTER_ENV)
        # A restarted node joins, starts its replica and is probed: on a slow machine, most of a minute.
        await wait_for(client, "n4 back", all_nodes_up, timeout=60)
        await serve_until(client, lambda nodes: "n4" in nodes)


async def test_a_partitioned_node_leaves_and_rejoins_when_the_link_heals(binary, tmp_path, netns, nats_cluster_netns):
    # Node i runs in host i beside nats-server i; the client reaches node 1 through a forwarded port.
    nodes = {
        name: start_cluster_node(binary, tmp_path, nats_cluster_netns.urls, name, CLUSTER_ENV, netns=netns, host=i)
        for i, name in enumerate(NODES[:3])
    }
    try:
        async with Client(nodes["n1"].url, mode="auto") as client:
            three = lambda s: all_nodes_up(s, NODES[:3])  # noqa: E731
            await wait_for(client, "three nodes", three, timeout=30)

            netns.cut(2)
            await wait_for(client, "n3 cut off", lambda s: "n3" not in replicas_by_node(s), timeout=30)
            results = await calls(client, 16, at_once=4)
            assert not [r for r, _ in results if r.is_error]
            assert {node_of(r) for r, _ in results} <= {"n1", "n2"}

            netns.heal(2)
            await wait_for(client, "n3 back", three, timeout=60)
            await serve_until(client, lambda nodes: "n3" in nodes)
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                stop_serve(node)
