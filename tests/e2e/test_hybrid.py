"""The hybrid tier: two edge sites (JetsonMind clusters `site1`, `site2`, two nodes each, one nats-server
each) whose NATS servers are leaf nodes of a cloud hub, where one cloud node (`jetsonmind serve --cluster`
against the hub, cluster `cloud`) offers its compute to every site. Each site's uplink crosses an emulated
WAN link (about 50 ms round trip, 1% of frames lost each way). Driven by the official MCP SDK and, to watch
what crosses the uplinks, nats-py at the hub."""

import json
import shutil
import time
import uuid
from contextlib import asynccontextmanager, contextmanager

import anyio
import nats
import pytest

from conftest import NO_CACHE, connected, eventually, read_json, start_nodes, stop_serve
from natscluster import NatsHybrid, Wan
from natsclient import caught_up, nats_client, stream_exists, stream_payloads
from test_cluster_settings import cluster_cli, cluster_keys, create_cluster_key, key_id, session_works
from test_cluster_views import status_json

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


# The WAN between each site and the hub: 25 ms each way (+/- 2 ms), 1% of frames lost each way.
WAN = Wan(delay_ms=25, jitter_ms=2, loss=0.01)


@pytest.fixture
def hybrid_tier(binary, tmp_path):
    with NatsHybrid(tmp_path / "hybrid", sites=2, wan=WAN) as hybrid, hybrid_nodes(binary, tmp_path, hybrid) as nodes:
        yield hybrid, nodes


def generate(prompt, tokens=16):
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
    """The cloud's compute is up in this node's routing: a candidate nothing excludes, whose load it
    knows."""
    candidates = (await decision(client))["candidates"]
    return any(
        c["replica"] == "compute@cloud.c1" and c.get("excluded") is None and c.get("utilization") is not None
        for c in candidates
    )


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

        # A fan-out asks every replica it may: the cloud's too, unless the request keeps it home.
        assert "compute@cloud.c1" in await asked(client)
        assert "compute@cloud.c1" not in await asked(client, meta={"jetsonmind/egress": {"edge_only": True}})


async def asked(client, meta=None):
    """The replicas an `aggregate_responses` of text_generate (strategy all) asked."""
    arguments = {"tool": "text_generate", "arguments": generate("Say hi.", 4), "strategy": "all"}
    result = await client.call_tool("aggregate_responses", arguments, meta=meta)
    assert not result.is_error, result.content
    return {answer["replica"] for answer in json.loads(result.content[0].text)["answers"]}


# The must-show's outage: long enough for every node's view of the cloud to expire and calls to go on
# without it, and for the site's analytics to keep growing.
OUTAGE_SECS = 30


async def analytics_calls(client, tool="text_generate"):
    """The calls of `tool` this node's own analytics counted."""
    analytics = await read_json(client, "jetson://performance/analytics")
    return sum(s["calls"] for s in analytics["series"] if s["tool"] == tool and s["server"] == "jetsonmind-gateway")


async def settings_document(js, bucket):
    kv = await js.key_value(bucket)
    entry = await kv.get((await kv.keys())[0])
    return json.loads(entry.value)


@pytest.mark.anyio
async def test_a_site_cut_off_keeps_serving_and_the_hub_gets_every_record_once_healed(binary, tmp_path, hybrid_tier):
    hybrid, nodes = hybrid_tier

    def cloud_status():
        """What `jetsonmind cluster status` says of the hub, from site1."""
        return status_json(binary, tmp_path, hybrid.sites[0].urls, site_env(hybrid, 0))["cloud"]

    async with nats_client(hybrid.hub.client_address(0)) as hub, nats_client(hybrid.sites[0].client_address(0)) as site:
        hub_js, site_js = hub.jetstream(), site.jetstream()
        records, settings = "site1_analytics", "KV_site1_settings"
        for mirror in (records, settings):
            await eventually(f"the hub mirrors {mirror}", lambda: stream_exists(hub_js, mirror), timeout=60)

        async with connected(nodes["s1a"].url, None) as client:
            await client.call_tool("text_generate", generate("Before the cut.", 8))
            await eventually("the hub has site1's records", lambda: in_step(site_js, hub_js, records))
            counted = await analytics_calls(client)
            held = (await hub_js.stream_info(records)).state.messages

            await anyio.to_thread.run_sync(hybrid.cut, 0)
            calls, started = 0, time.monotonic()
            while time.monotonic() - started < OUTAGE_SECS:
                result = await client.call_tool("text_generate", generate(f"During the cut, call {calls}.", 8))
                assert last_hop(result)["tier"] != "cloud"
                calls += 1
            changed = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": 4321}}})
            assert not changed.is_error, changed.content
            assert await analytics_calls(client) == counted + calls, "the site's analytics go on"
            assert (await site_js.stream_info(records)).state.messages >= held + calls
            assert (await hub_js.stream_info(records)).state.messages == held, "nothing crossed the cut"
            assert not (await anyio.to_thread.run_sync(cloud_status))["reachable"]

        await anyio.to_thread.run_sync(hybrid.heal, 0)
        await eventually("the hub catches up once healed", lambda: in_step(site_js, hub_js, records), timeout=60)
        at_site, at_hub = await stream_payloads(site_js, records), await stream_payloads(hub_js, records)
        assert at_hub == at_site, "every record, in order"
        ids = [(r["node"], r["started_ms"], r["seq"]) for r in map(json.loads, at_hub)]
        assert len(set(ids)) == len(ids), "none twice"
        assert len(ids) >= held + calls

        await eventually("the settings changed while cut reach the hub", lambda: in_step(site_js, hub_js, settings))
        document = await settings_document(hub.jetstream(), "site1_settings")
        assert "4321" in json.dumps(document), document
        healed = await anyio.to_thread.run_sync(cloud_status)
        assert healed["reachable"] and healed["cloud_nodes"] == ["c1"], healed
        shown = {b["stream"]: b for b in healed["backups"]}
        assert shown[records]["hub_messages"] >= held + calls and shown[settings]["lag"] == 0, shown


async def in_step(site_js, hub_js, name):
    """The hub has a mirror of the site's stream `name`, with all the site has, and no lag."""
    if not await stream_exists(hub_js, name):
        return False
    count = (await site_js.stream_info(name)).state.messages
    return await caught_up(hub_js, name, count) and (await hub_js.stream_info(name)).state.messages == count


def wipe(cluster, i):
    """Server i of `cluster` loses everything it stored (a replaced disk), then starts again."""
    server = cluster.servers[i]
    server.stop()
    shutil.rmtree(server.store)
    cluster.restart(i)
    cluster.wait_ready()


@pytest.mark.anyio
async def test_a_site_that_lost_its_nats_state_is_rebuilt_from_the_hub(binary, tmp_path):
    with NatsHybrid(tmp_path / "hybrid", sites=1, wan=WAN) as hybrid:
        site, env = hybrid.sites[0], {**site_env(hybrid, 0), "JETSONMIND_AUTH__REQUIRED": "true"}
        admin = create_cluster_key(binary, site, "admin", "admin", env=env)
        revoked = create_cluster_key(binary, site, "gone", "tools:*", env=env)
        cluster_keys(binary, site, "revoke", key_id(revoked), env=env)
        (first,) = start_nodes(binary, tmp_path, site, ["s1a"], env).values()
        try:
            async with connected(first.url, admin) as client:
                changed = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": 4321}}})
                assert not changed.is_error, changed.content
            # The node makes the hub's mirrors: it runs until they hold what the site does.
            async with nats_client(hybrid.hub.client_address(0)) as hub, nats_client(site.client_address(0)) as at_site:
                for bucket in ("KV_site1_settings", "KV_site1_keys"):
                    in_the_cloud = lambda: in_step(at_site.jetstream(), hub.jetstream(), bucket)  # noqa: E731
                    await eventually(f"the hub has {bucket}", in_the_cloud, timeout=60)
        finally:
            stop_serve(first)

        await anyio.to_thread.run_sync(wipe, site, 0)
        await anyio.to_thread.run_sync(hybrid.wait_linked, 0)
        report = cluster_cli(binary, site, "restore", "--from-cloud", env=env, timeout=120)
        assert "KV_site1_settings: restored from the hub" in report, report
        assert "KV_site1_keys: restored from the hub" in report, report

        (replaced,) = start_nodes(binary, tmp_path, site, ["s1c"], env).values()
        try:
            async with connected(replaced.url, admin) as client:
                settings = await read_json(client, "jetson://config/settings")
                assert settings["cache"]["ttl_secs"] == 4321, settings["scope"]
            assert not await session_works(replaced.url, revoked), "a revoked key stays revoked"
        finally:
            stop_serve(replaced)
