"""The hybrid tier: two edge sites (JetsonMind clusters `site1`, `site2`, two nodes each, one nats-server
each) whose NATS servers are leaf nodes of a cloud hub, where one cloud node (`jetsonmind serve --cluster`
against the hub, cluster `cloud`) offers its compute to every site. Driven by the official MCP SDK and,
to watch what crosses the uplinks, nats-py at the hub."""

import json
import uuid
from contextlib import asynccontextmanager, contextmanager

import anyio
import nats
import pytest

from conftest import NO_CACHE, connected, eventually, start_nodes, stop_serve

# Each compute replica holds one call at once (one running, one waiting: capacity 2, ceiling 50%), so a
# handful of calls fills a site.
SMALL_REPLICAS = {
    **NO_CACHE,
    "JETSONMIND_COMPUTE__PARALLEL": "1",
    "JETSONMIND_COMPUTE__QUEUE_DEPTH": "1",
    "JETSONMIND_CONTROL__UTILIZATION_CEILING": "0.5",
    "JETSONMIND_CONTROL__QUEUE_TIMEOUT_MS": "120000",
    "JETSONMIND_MCP__LIST_TTL_MS": "0",
}

SITE_NODES = {0: ["s1a", "s1b"], 1: ["s2a", "s2b"]}


def site_env(hybrid, k):
    return {
        **SMALL_REPLICAS,
        "JETSONMIND_CLUSTER__NAME": hybrid.domain(k),
        "JETSONMIND_HYBRID__HUB_DOMAIN": hybrid.HUB_DOMAIN,
    }


@contextmanager
def hybrid_nodes(binary, tmp_path, hybrid):
    """The cloud node `c1` at the hub, then each site's two nodes: {name: Served}; all stopped after."""
    nodes = {}
    try:
        nodes.update(start_nodes(binary, tmp_path, hybrid.hub, ["c1"], {**SMALL_REPLICAS, "JETSONMIND_CLUSTER__NAME": "cloud"}))
        for k, names in SITE_NODES.items():
            nodes.update(start_nodes(binary, tmp_path, hybrid.sites[k], names, site_env(hybrid, k)))
        yield nodes
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                stop_serve(node)


@pytest.fixture
def hybrid_tier(binary, tmp_path, nats_hybrid):
    with hybrid_nodes(binary, tmp_path, nats_hybrid) as nodes:
        yield nats_hybrid, nodes


def generate(prompt, tokens=48):
    return {"prompt": prompt, "max_tokens": tokens, "temperature": 0}


def last_hop(result):
    assert not result.is_error, result.content
    return result.meta["jetsonmind/route"][-1]


async def decision(client, egress=None):
    arguments = {"tool": "text_generate", "arguments": generate("where would this go?")}
    if egress is not None:
        arguments["egress"] = egress
    result = await client.call_tool("route_request", arguments)
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)["decision"]


async def sees_the_cloud(client):
    """The cloud's compute is up in this node's routing (a candidate nothing excludes)."""
    candidates = (await decision(client))["candidates"]
    return any(c["replica"] == "compute@cloud.c1" and c.get("excluded") is None for c in candidates)


@asynccontextmanager
async def hub_traffic(hybrid):
    """Every message published at the hub (what crosses the uplinks, as a subscriber to `>` there hears
    it): a list that fills while the block runs."""
    client = await nats.connect(hybrid.hub.client_address(0), connect_timeout=5)
    heard = []

    async def keep(message):
        heard.append(message.data)

    await client.subscribe(">", cb=keep)
    await client.flush()
    try:
        yield heard
    finally:
        await client.close()


async def call_all(client, count, prompt, meta=None):
    """`count` text_generate calls at once; their results, in order."""
    results = [None] * count

    async def one(i):
        results[i] = await client.call_tool("text_generate", generate(f"{prompt} #{i}"), meta=meta)

    async with anyio.create_task_group() as calls:
        for i in range(count):
            calls.start_soon(one, i)
    return results


@pytest.mark.anyio
async def test_a_site_at_its_ceiling_overflows_to_the_cloud_and_edge_only_calls_never_leave(hybrid_tier):
    hybrid, nodes = hybrid_tier
    async with connected(nodes["s1a"].url, None) as client:
        await eventually("site1 routes to the cloud node", lambda: sees_the_cloud(client), timeout=60)
        before = await decision(client)
        assert before["tier"] in ("node", "site"), "an idle site serves its own calls"

        async with hub_traffic(hybrid) as heard:
            overflow = f"overflow-{uuid.uuid4().hex}"
            hops = [last_hop(r) for r in await call_all(client, 6, f"Say hello. {overflow}")]
            tiers = sorted(hop["tier"] for hop in hops)
            assert "cloud" in tiers, f"six calls on a site of two one-call replicas: {tiers}"
            assert any(t != "cloud" for t in tiers), tiers
            assert all(hop["node"] == "c1" for hop in hops if hop["tier"] == "cloud"), hops

            private = f"private-{uuid.uuid4().hex}"
            edge_only = {"jetsonmind/egress": {"edge_only": True}}
            hops = [last_hop(r) for r in await call_all(client, 6, f"Say hello. {private}", meta=edge_only)]
            assert {hop["tier"] for hop in hops} <= {"node", "site"}, hops
            assert {hop["node"] for hop in hops} <= {"s1a", "s1b"}, hops

            await anyio.sleep(1)  # what was on its way to the watcher arrives
            crossed = b"\n".join(heard)
        assert overflow.encode() in crossed, "the watcher hears what goes to the cloud"
        assert private.encode() not in crossed, "an edge_only call reached the hub"

        refused = await decision(client, egress={"edge_only": True})
        cloud = next(c for c in refused["candidates"] if c["replica"] == "compute@cloud.c1")
        assert cloud["excluded"]["kind"] == "edge_only", cloud
