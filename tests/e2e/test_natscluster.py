"""The nats-server helpers that the edge-cluster tests stand on, proven with nats-servers alone (no
jetsonmind): a real JetStream cluster keeps a meta leader when its leader is killed and takes the
server back on restart; in network namespaces, a host cut off the switch loses its routes while the
other two keep a quorum and elect a new meta leader (the cut one, the old leader, only steps down some
15 s later when raft notices its lost quorum: not waited for), and it rejoins once healed; nothing is left behind.
Hybrid (hub and leafed sites, each in its own JetStream domain): messages cross the hub between sites and a hub
client reaches each site's JetStream by domain; a site's KV works while its uplink is cut; a hub stream sourcing
a site's stream gets what the site wrote while cut, once healed, exactly once (driven with nats-py)."""

import subprocess
import time
from pathlib import Path

import anyio
import pytest
from conftest import eventually
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ExternalStream, StreamSource
from nats.js.errors import ServiceUnavailableError

from natscluster import NatsCluster, NatsHybrid, Netns, NotYet, Wan
from natsclient import caught_up, nats_client, stream_exists, stream_payloads

# What a JetStream request into a domain that cannot be reached ends with, by nats-py's wording.
UNREACHABLE = (NoRespondersError, NatsTimeout, ServiceUnavailableError)


def others(cluster, i):
    return [j for j in range(len(cluster.servers)) if j != i]


def routes_only_to(cluster, i, expected):
    """A check: server i's routes go to exactly the servers named in `expected`."""
    return lambda: cluster.route_peers(i) == expected or NotYet(cluster.state(i))


def test_cluster_keeps_a_leader_when_its_leader_is_killed_and_takes_it_back(nats_cluster):
    cluster = nats_cluster
    assert len(cluster.urls.split(",")) == 3
    leader = cluster.wait_ready()
    killed = cluster.index_of(leader)
    rest = others(cluster, killed)

    cluster.kill(killed)
    assert cluster.wait_ready(rest) != leader
    for i in rest:
        remaining = {cluster.names[j] for j in rest if j != i}
        cluster.wait_for(routes_only_to(cluster, i, remaining), f"{cluster.names[i]} drops its routes to {leader}")

    cluster.restart(killed)
    cluster.wait_ready()
    assert cluster.route_peers(killed) == {cluster.names[j] for j in rest}


def test_a_cut_host_loses_its_routes_the_rest_elect_a_leader_and_it_rejoins_when_healed(netns, nats_cluster_netns):
    cluster = nats_cluster_netns
    root_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f"{netns.subnet}." not in root_addresses, "the hosts' addresses leaked into the root namespace"
    leader = cluster.wait_ready()
    cut = cluster.index_of(leader)

    netns.cut(cut)
    assert cluster.wait_ready(others(cluster, cut)) != leader
    cluster.wait_for(routes_only_to(cluster, cut, set()), f"the cut {leader} has no routes")

    netns.heal(cut)
    cluster.wait_ready()


def test_everything_is_torn_down(tmp_path):
    with Netns(count=2) as hosts:
        with NatsCluster(tmp_path, n=2, netns=hosts) as cluster:
            processes = [server.process for server in cluster.servers]
            assert all(process.poll() is None for process in processes)
        assert all(process.poll() is not None for process in processes)
        namespaces = [hosts.switch, *hosts.hosts]
        assert all(Path("/run/netns", name).exists() for name in namespaces)
    assert not any(Path("/run/netns", name).exists() for name in namespaces)


def hub_url(hybrid):
    return hybrid.hub.client_address(0)


def site_url(hybrid, k):
    return hybrid.sites[k].client_address(0)


@pytest.mark.anyio
async def test_two_sites_leafed_to_a_hub_exchange_messages_and_the_hub_reaches_each_domain(nats_hybrid):
    hybrid = nats_hybrid
    assert hybrid.linked_sites() == {0, 1}
    async with nats_client(site_url(hybrid, 0)) as site1, nats_client(site_url(hybrid, 1)) as site2:
        heard = await site2.subscribe("hello.>")
        await eventually("site2's interest crosses the hub", lambda: probe(site1, heard))

    async with nats_client(hub_url(hybrid)) as hub, nats_client(site_url(hybrid, 1)) as site2:
        await hub.jetstream(domain="site2").add_stream(name="MADE_FROM_HUB", subjects=["made.>"])
        assert await stream_exists(site2.jetstream(), "MADE_FROM_HUB")
        assert not await stream_exists(hub.jetstream(), "MADE_FROM_HUB")
        assert not await stream_exists(hub.jetstream(domain="site1"), "MADE_FROM_HUB")


async def probe(publisher, subscription):
    """Publishes once; whether `subscription` got it within a second (interest crosses the hub lazily)."""
    await publisher.publish("hello.site2", b"from site1")
    try:
        message = await subscription.next_msg(timeout=1)
    except NatsTimeout:
        return False
    return message.data == b"from site1"


@pytest.mark.anyio
async def test_a_site_kv_works_while_its_uplink_is_cut_and_the_hub_reads_it_when_healed(nats_hybrid):
    hybrid = nats_hybrid
    async with nats_client(site_url(hybrid, 0)) as site1:
        kv = await site1.jetstream().create_key_value(bucket="settings")
        await kv.put("before", b"1")

        await anyio.to_thread.run_sync(hybrid.cut, 0)
        async with nats_client(hub_url(hybrid)) as hub:
            with pytest.raises(UNREACHABLE):
                await hub.jetstream(domain="site1", timeout=2).key_value("settings")
        await kv.put("during", b"2")
        assert (await kv.get("before")).value == b"1"
        assert (await kv.get("during")).value == b"2"
        assert hybrid.linked_sites() == {1}

    await anyio.to_thread.run_sync(hybrid.heal, 0)
    async with nats_client(hub_url(hybrid)) as hub:
        from_hub = await hub.jetstream(domain="site1").key_value("settings")
        assert (await from_hub.get("during")).value == b"2"


@pytest.mark.anyio
async def test_a_hub_stream_sourcing_a_site_gets_what_was_written_while_cut_exactly_once(nats_hybrid):
    hybrid = nats_hybrid
    written = [f"event {i}".encode() for i in range(15)]
    async with nats_client(site_url(hybrid, 0)) as site1, nats_client(hub_url(hybrid)) as hub:
        site_js, hub_js = site1.jetstream(), hub.jetstream()
        await site_js.add_stream(name="EVENTS", subjects=["events.>"])
        source = StreamSource(name="EVENTS", external=ExternalStream(api="$JS.site1.API"))
        await hub_js.add_stream(name="SITE1_EVENTS", sources=[source])
        for payload in written[:5]:
            await site_js.publish("events.calls", payload)
        await eventually("the hub has what site1 wrote while linked", lambda: caught_up(hub_js, "SITE1_EVENTS", 5))

        await anyio.to_thread.run_sync(hybrid.cut, 0)
        for payload in written[5:]:
            ack = await site_js.publish("events.calls", payload)
            assert ack.stream == "EVENTS"
        assert await stream_payloads(hub_js, "SITE1_EVENTS") == written[:5]

        await anyio.to_thread.run_sync(hybrid.heal, 0)
        await eventually("the hub catches up once healed", lambda: caught_up(hub_js, "SITE1_EVENTS", len(written)))
        assert await stream_payloads(hub_js, "SITE1_EVENTS") == written


@pytest.mark.anyio
async def test_a_wan_uplink_delays_what_crosses_it_and_the_leaf_holds(tmp_path):
    """The emulated WAN is really there: a request from a site to a responder at the hub takes at least
    the link's two one-way delays, and the leaf link survives its loss."""
    wan = Wan(delay_ms=25, jitter_ms=2, loss=0.01)
    with NatsHybrid(tmp_path / "wan", sites=1, wan=wan) as hybrid:
        async with nats_client(hybrid.hub.client_address(0)) as hub, nats_client(site_url(hybrid, 0)) as site:

            async def echo(message):
                await message.respond(message.data)

            await hub.subscribe("echo", cb=echo)
            await hub.flush()
            await eventually("the hub's responder is known at the site", lambda: answered(site))
            round_trips = []
            for _ in range(20):
                started = time.monotonic()
                assert (await site.request("echo", b"x" * 512, timeout=5)).data == b"x" * 512
                round_trips.append((time.monotonic() - started) * 1000)
        assert sorted(round_trips)[len(round_trips) // 2] >= 2 * (wan.delay_ms - wan.jitter_ms), round_trips
        assert hybrid.linked_sites() == {0}


async def answered(client):
    try:
        await client.request("echo", b"?", timeout=1)
    except (NoRespondersError, NatsTimeout):
        return False
    return True
