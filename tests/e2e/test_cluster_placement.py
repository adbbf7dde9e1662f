"""Placements across a cluster: three nats-servers and three `jetsonmind serve --cluster` nodes,
driven by the official Python MCP SDK through node 1's gateway. `scale_cluster` places 2 replicas
of a model; the nodes it names load it; a drained node takes no new calls and its replica moves; a
node killed with SIGKILL has its replica placed again elsewhere."""

import json
import signal

import pytest
from mcp import Client

from conftest import DEFAULT_MODEL, NO_CACHE, eventually, node_of, running_nodes

pytestmark = pytest.mark.anyio

NODES = ["node1", "node2", "node3"]
ENV = {
    **NO_CACHE,
    "JETSONMIND_MCP__LIST_TTL_MS": "0",
    "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500",
    "JETSONMIND_CLUSTER__RECONCILE_MS": "500",
    # Spread calls by load, so a drained node would be picked if drains were ignored.
    "JETSONMIND_CONTROL__STRATEGY": "least_outstanding",
}
# A bound against hanging, not a speed check: a node's death is noticed after the node TTL (4 s),
# then a load on a loaded 2-core machine.
SETTLE_SECS = 60


@pytest.fixture
def three_nodes(binary, tmp_path, nats_cluster):
    with running_nodes(binary, tmp_path, nats_cluster, NODES, ENV) as nodes:
        yield nodes


async def scale(client, **arguments):
    result = await client.call_tool("scale_cluster", arguments)
    assert not result.is_error, result.content
    return result.structured_content["cluster"]


async def placed(client, check, what):
    """`scale_cluster status`'s placement of DEFAULT_MODEL, once `check(placement, status)` holds."""

    async def attempt():
        status = await scale(client, action="status")
        placement = next((p for p in status["placements"] if p["model"] == DEFAULT_MODEL), None)
        return placement is not None and check(placement, status) and placement

    return await eventually(what, attempt, timeout=SETTLE_SECS)


def running_as_assigned(placement, _status):
    return len(placement["assigned"]) == placement["replicas"] and set(placement["assigned"]) <= set(
        placement["loaded_on"]
    )


async def test_placed_replicas_reconcile_move_off_a_drained_node_and_are_replaced_after_a_kill(three_nodes):
    async with Client(three_nodes["node1"].url, mode="auto") as client:
        status = await scale(client, action="place", model=DEFAULT_MODEL, replicas=2, strategy="spread")
        assert status["placements"][0]["replicas"] == 2, status
        first = await placed(client, running_as_assigned, "two replicas loaded where assigned")
        assert len(set(first["assigned"])) == 2

        # Drain one of them (not the node the client talks to): its replica moves, it takes no calls.
        victim = next(node for node in first["assigned"] if node != "node1")
        status = await scale(client, action="drain", node=victim)
        assert status["drained"] == [victim], status
        moved = await placed(
            client,
            lambda p, s: victim not in p["assigned"] and running_as_assigned(p, s),
            "the drained node's replica placed elsewhere",
        )
        results = [
            await client.call_tool("text_generate", {"prompt": f"Count to {i}.", "max_tokens": 2, "temperature": 0})
            for i in range(12)
        ]
        assert not [r for r in results if r.is_error]
        served = {node_of(r) for r in results}
        assert victim not in served, served
        await placed(client, lambda p, s: victim not in p["loaded_on"], "the drained node unloading it")
        status = await scale(client, action="undrain", node=victim)
        assert status["drained"] == [], status

        # Kill a node running a replica: once it leaves the cluster, the replica is placed again.
        killed = next(node for node in moved["assigned"] if node != "node1")
        three_nodes[killed].process.send_signal(signal.SIGKILL)
        replaced = await placed(
            client,
            lambda p, s: killed not in p["assigned"] and running_as_assigned(p, s),
            "the killed node's replica placed again",
        )
        assert len(replaced["assigned"]) == 2 and killed not in replaced["loaded_on"], replaced

        # 0 replicas removes the placement.
        status = await scale(client, action="place", model=DEFAULT_MODEL, replicas=0)
        assert status["placements"] == [], status


async def test_placement_arguments_are_checked(three_nodes):
    async with Client(three_nodes["node1"].url, mode="auto") as client:
        for bad, named in [
            ({"action": "place", "model": DEFAULT_MODEL}, "replicas"),
            ({"action": "place", "model": "no such model!", "replicas": 1}, "cannot be placed"),
            ({"action": "drain"}, "node"),
            ({"action": "drain", "node": "not a node"}, "not a node id"),
        ]:
            result = await client.call_tool("scale_cluster", bad)
            assert result.is_error and named in json.dumps([c.text for c in result.content]), (bad, result)
