"""Resource subscriptions through `jetsonmind serve`'s gateway, with the official
Python MCP SDK: `subscriptions/listen` (2026-07-28) over HTTP and stdio, and
`resources/subscribe` (handshake era) over stdio and on an HTTP session. Settings
changed with `update_settings` notify subscribers, metrics notify every interval."""

import json
import os

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from conftest import start_serve, stop_serve

pytestmark = [
    pytest.mark.anyio,
    # resources/subscribe is the handshake era's way, tested on purpose.
    pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed"),
]

METRICS = "jetson://system/metrics"
SETTINGS = "jetson://config/settings"
# Fast updates, so the test waits little; the default is 1 s.
FAST = {"JETSONMIND_DATA__NOTIFY_INTERVAL_MS": "200"}


@pytest.fixture
def fresh_data(tmp_path):
    """A data dir of this test's own: update_settings persists into it."""
    return tmp_path / "data"


@pytest.fixture
def gateway(request, binary, fresh_data, tmp_path):
    """`jetsonmind serve` over HTTP (a URL) or stdio (server parameters)."""
    if request.param == "stdio":
        yield StdioServerParameters(
            command=str(binary), args=["serve", "--stdio", "--data-dir", str(fresh_data)], env={**os.environ, **FAST}
        )
        return
    served = start_serve(binary, fresh_data, tmp_path / "serve.log", FAST)
    yield served.url
    stop_serve(served)


async def settings_of(client):
    return json.loads((await client.read_resource(SETTINGS)).contents[0].text)


async def change_ttl(client, seconds):
    result = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": seconds}}})
    assert not result.is_error, result.content
    assert result.structured_content["effective_now"] == ["cache.ttl_secs"]


@pytest.mark.parametrize("gateway", ["http", "stdio"], indirect=True)
async def test_listen_receives_metrics_ticks_and_the_settings_change(gateway, fresh_data):
    async with Client(gateway, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        async with client.listen(resource_subscriptions=[METRICS, SETTINGS, "jetson://no/such"]) as sub:
            assert set(sub.honored.resource_subscriptions) == {METRICS, SETTINGS}
            seen = []
            with anyio.fail_after(15):
                async for event in sub:
                    seen.append(event.uri)
                    if seen.count(METRICS) == 2:
                        break
                await change_ttl(client, 123)
                async for event in sub:
                    seen.append(event.uri)
                    if event.uri == SETTINGS:
                        break
        assert (await settings_of(client))["cache"]["ttl_secs"] == 123
    assert "ttl_secs = 123" in (fresh_data / "settings.toml").read_text()


@pytest.mark.parametrize("gateway", ["stdio", "http"], indirect=True)
async def test_handshake_era_subscribe(gateway):
    updates = []

    async def on_message(message):
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async with Client(gateway, mode="legacy", message_handler=on_message) as client:
        assert client.protocol_version == "2025-11-25"
        await client.subscribe_resource(SETTINGS)
        await change_ttl(client, 77)
        with anyio.fail_after(10):
            while SETTINGS not in updates:
                await anyio.sleep(0.05)
        # Not subscribed to metrics: none of those arrive.
        await anyio.sleep(0.5)
        assert METRICS not in updates
        await client.unsubscribe_resource(SETTINGS)
        count = len(updates)
        await change_ttl(client, 78)
        await anyio.sleep(0.5)
        assert len(updates) == count


async def test_sessions_are_capped_and_end_with_the_client(binary, fresh_data, tmp_path):
    served = start_serve(binary, fresh_data, tmp_path / "serve.log", {"JETSONMIND_HTTP__MAX_SESSIONS": "1"})
    try:
        async with Client(served.url, mode="legacy") as first:
            # The SDK raises the server's error inside exception groups.
            refused = pytest.RaisesExc(MCPError, match="too many sessions.*http.max_sessions")
            with pytest.RaisesGroup(refused, flatten_subgroups=True):
                async with Client(served.url, mode="legacy"):
                    pass
            # The 2026-07-28 era needs no session.
            async with Client(served.url, mode="auto") as modern:
                assert modern.protocol_version == "2026-07-28"
                await settings_of(modern)
            await settings_of(first)
        # Leaving sent DELETE: the session is gone, so there is room again.
        async with Client(served.url, mode="legacy") as second:
            await settings_of(second)
    finally:
        stop_serve(served)


@pytest.mark.parametrize("gateway", ["http"], indirect=True)
async def test_invalid_settings_name_the_key_and_change_nothing(gateway, fresh_data):
    async with Client(gateway, mode="auto") as client:
        result = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": -5}}})
        assert result.is_error
        assert "cache.ttl_secs" in result.content[0].text
        assert (await settings_of(client))["cache"]["ttl_secs"] == 3600
    assert not (fresh_data / "settings.toml").exists()
