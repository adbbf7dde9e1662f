"""What a cluster shares through JetStream KV: settings and API keys. Three nats-servers (one
JetStream cluster) and three `jetsonmind serve --cluster` nodes that require an API key, driven by
the official Python MCP SDK. A key created with `jetsonmind keys create` against the cluster works
at every node and, once revoked, is refused at every node; a setting changed at one node holds at
the others; two changes of one key made from the same revision conflict, and the loser is told
which key."""

import json
import os
import subprocess

import pytest

from conftest import NO_CACHE, Statuses, client_with, connected, eventually, read_json, running_nodes

pytestmark = pytest.mark.anyio

NODES = ["node1", "node2", "node3"]
ENV = {**NO_CACHE, "JETSONMIND_AUTH__REQUIRED": "true", "JETSONMIND_MCP__LIST_TTL_MS": "0"}


@pytest.fixture
def three_nodes(binary, tmp_path, nats_cluster):
    with running_nodes(binary, tmp_path, nats_cluster, NODES, ENV) as nodes:
        yield nodes, nats_cluster


def cluster_cli(binary, nats, *args, env=None, timeout=60):
    """`jetsonmind ARGS` against the cluster, which must succeed: its `[cluster]` set by the environment
    (and `env`); its stdout."""
    env = {**os.environ, **(env or {}), "JETSONMIND_CLUSTER__URLS": json.dumps(nats.urls.split(","))}
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def cluster_keys(binary, nats, *args, env=None):
    """`jetsonmind keys ARGS` against the cluster."""
    return cluster_cli(binary, nats, "keys", *args, env=env)


def create_cluster_key(binary, nats, name, *scopes, env=None):
    args = ["create", "--name", name]
    for scope in scopes:
        args += ["--scope", scope]
    return cluster_keys(binary, nats, *args, env=env)


def key_id(key):
    """`jm_<id>_<secret>`: the id `keys revoke` takes."""
    return key.split("_")[1]


async def session_works(url, key):
    """Whether a session with `key` opens and lists tools at `url` (else the HTTP status met)."""
    statuses = Statuses()
    http, client = client_with(url, key, statuses)
    async with http:
        try:
            async with client:
                return bool(await client.list_tools())
        except Exception:
            assert statuses.seen, "refused with an HTTP error"
            return False


async def settings(client):
    return await read_json(client, "jetson://config/settings")


async def update(client, change, if_revision=None):
    arguments = {"settings": change}
    if if_revision is not None:
        arguments["if_revision"] = if_revision
    return await client.call_tool("update_settings", arguments)


async def test_a_key_made_at_one_node_works_everywhere_until_revoked(three_nodes, binary):
    nodes, nats = three_nodes
    key = create_cluster_key(binary, nats, "ci", "tools:*", "resources:*")
    # Mirrored into every node's key file within seconds.
    await eventually("node3 accepting the key", lambda: session_works(nodes["node3"].url, key))
    assert await session_works(nodes["node2"].url, key)
    listed = cluster_keys(binary, nats, "list")
    assert key_id(key) in listed and key not in listed, "ids are listed, never keys"

    cluster_keys(binary, nats, "revoke", key_id(key))

    async def refused_everywhere():
        return not any([await session_works(node.url, key) for node in nodes.values()])

    await eventually("every node refusing the revoked key", refused_everywhere)
    for node in nodes.values():
        assert key not in node.log.read_text(), "secrets never reach the log"


async def test_a_setting_changed_at_one_node_holds_everywhere_and_a_concurrent_change_conflicts(
    three_nodes, binary
):
    nodes, nats = three_nodes
    admin = create_cluster_key(binary, nats, "admin", "admin")
    await eventually("every node accepting the admin key", lambda: all_accept(nodes, admin))
    async with connected(nodes["node1"].url, admin) as node1, connected(nodes["node3"].url, admin) as node3:
        before = await settings(node1)
        assert before["scope"]["cluster"] is True
        assert "http" in before["scope"]["node_keys"], before["scope"]

        # Both have read the same revision of the cluster's settings.
        async def same_revision():
            seen = [(await settings(client))["scope"]["revision"] for client in (node1, node3)]
            return seen[0] == seen[1] and seen  # a list: true even at revision 0

        revision = (await eventually("node1 and node3 at one revision", same_revision))[0]
        won = await update(node1, {"cache": {"ttl_secs": 61}}, revision)
        assert not won.is_error, won.content
        assert won.structured_content["cluster_wide"] == ["cache.ttl_secs"], won.structured_content

        lost = await update(node3, {"cache": {"ttl_secs": 62}}, revision)
        assert lost.is_error, lost.content
        message = lost.content[0].text
        assert "conflict" in message and "cache.ttl_secs" in message, message

        # The loser reads again and retries: it wins now.
        async def applied_at_node3():
            current = await settings(node3)
            return current["cache"]["ttl_secs"] == 61 and current

        fresh = await eventually("node3 applying node1's change", applied_at_node3)
        retried = await update(node3, {"cache": {"ttl_secs": 63}}, fresh["scope"]["revision"])
        assert not retried.is_error, retried.content

        # A node's own key stays with it (cluster nodes start with one thread each here).
        own = await update(node3, {"compute": {"threads": 2}})
        assert not own.is_error and own.structured_content["cluster_wide"] == [], own.content

    async def node2_agrees():
        async with connected(nodes["node2"].url, admin) as node2:
            current = await settings(node2)
        return current["cache"]["ttl_secs"] == 63 and current["compute"]["threads"] == 1

    await eventually("node2 holding the cluster's value", node2_agrees)


async def all_accept(nodes, key):
    return all([await session_works(node.url, key) for node in nodes.values()])
