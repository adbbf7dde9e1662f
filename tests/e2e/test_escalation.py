"""Review items 1-3: a key is authorized as itself wherever its call ends
up. Calls one tool makes for another (aggregate_responses, route_request)
are checked at the point they are dispatched, on the tool's own name and
access level; renamed tools stay administrative; settings that decide who is
trusted need `admin`; every shape of subscriptions/listen is checked."""

import json
import subprocess

import pytest
from mcp.shared.exceptions import MCPError

from conftest import (
    DEFAULT_MODEL,
    MODELS,
    NO_CACHE,
    Statuses,
    call,
    client_with,
    create_key,
    raw_post,
    start_jetsonmind,
    stop_serve,
)

pytestmark = pytest.mark.anyio

SCOPES = {
    "star": ["tools:*", "resources:*"],
    "settings": ["tools:update_settings", "resources:jetson://config/settings"],
    "gen": ["tools:text_generate"],
}
# Administrative tools a `tools:*` key must not reach through another tool.
ADMIN_CALLS = [
    ("update_settings", {"settings": {"cache": {"ttl_secs": 7}}}),
    ("manage_models", {"action": "list"}),
    ("load_model", {"model": DEFAULT_MODEL}),
    ("unload_model", {"model": DEFAULT_MODEL}),
    ("scale_cluster", {"action": "status"}),
    ("manage_resources", {"action": "list"}),
    ("optimize_system", {"action": "revert"}),
    (
        "calibrate_engine",
        {"trial": {"threads": 1, "slots": 1, "batch_size": 8, "clients": 1, "prompt_tokens": 4, "max_tokens": 2}},
    ),
]


def start_secured(binary, tmp_path_factory, env=None):
    data_dir = tmp_path_factory.mktemp("escalation-data")
    subprocess.run(
        [str(binary), "--data-dir", str(data_dir), "models", "import", str(MODELS / DEFAULT_MODEL), "--link"],
        capture_output=True,
        check=True,
    )
    keys = {name: create_key(binary, data_dir, name, *scopes) for name, scopes in SCOPES.items()}
    served = start_jetsonmind(
        binary,
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        tmp_path_factory.mktemp("escalation-logs") / "serve.log",
        {**NO_CACHE, "JETSONMIND_AUTH__REQUIRED": "true", **(env or {})},
    )
    return served, keys


@pytest.fixture(scope="module")
def secured(binary, tmp_path_factory):
    served, keys = start_secured(binary, tmp_path_factory)
    yield served, keys
    stop_serve(served)


@pytest.fixture(scope="module")
def prefixed(binary, tmp_path_factory):
    served, keys = start_secured(binary, tmp_path_factory, {"JETSONMIND_GATEWAY__PREFIX": "always"})
    yield served, keys
    stop_serve(served)


async def cache_ttl(client):
    read = await client.read_resource("jetson://config/settings")
    return json.loads(read.contents[0].text)["cache"]["ttl_secs"]


async def test_tools_calling_tools_do_not_lend_their_rights(secured):
    served, keys = secured
    http, client = client_with(served.url, keys["star"], Statuses())
    async with http, client:
        ttl = await cache_ttl(client)
        for tool, arguments in ADMIN_CALLS:
            fanned = await client.call_tool(
                "aggregate_responses", {"tool": tool, "arguments": arguments, "strategy": "all"}
            )
            assert fanned.is_error, (tool, fanned.content)
            assert "forbidden" in fanned.content[0].text and f"tools:{tool}" in fanned.content[0].text
        with pytest.raises(MCPError, match="forbidden"):
            await client.call_tool(
                "route_request", {"tool": "load_model", "arguments": {"model": DEFAULT_MODEL}, "dry_run": False}
            )
        assert await cache_ttl(client) == ttl, "update_settings did not run"

        # What the key may call still works through the same tools.
        routed = await client.call_tool(
            "route_request",
            {"tool": "text_generate", "arguments": {"prompt": "Hi", "max_tokens": 2}, "dry_run": False},
        )
        assert not routed.is_error, routed.content
        fanned = await client.call_tool(
            "aggregate_responses",
            {"tool": "text_generate", "arguments": {"prompt": "Hi", "max_tokens": 2}, "strategy": "first"},
        )
        assert not fanned.is_error, fanned.content


async def test_settings_that_decide_trust_need_admin(secured):
    served, keys = secured
    http, client = client_with(served.url, keys["settings"], Statuses())
    async with http, client:
        issuer = {"issuer": "https://evil.example", "jwks_url": "https://evil.example/jwks", "audience": "x"}
        for change in [
            {"auth": {"oauth": issuer}},
            {"http": {"allowed_hosts": ["evil.example"]}},
            {"control": {"nvpmodel_set_command": ["sh", "-c", "id"]}},
        ]:
            refused = await client.call_tool("update_settings", {"settings": change})
            assert refused.is_error and "only the admin scope" in refused.content[0].text, change
        allowed = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": 61}}})
        assert not allowed.is_error, allowed.content
        assert await cache_ttl(client) == 61


async def test_renamed_administrative_tools_stay_administrative(prefixed):
    served, keys = prefixed
    http, client = client_with(served.url, keys["star"], Statuses())
    async with http, client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "compute_text_generate" in tools, sorted(tools)
        for renamed in ["data_update_settings", "control_scale_cluster", "compute_load_model", "data_manage_models"]:
            assert renamed not in tools, renamed
    status, headers, _ = raw_post(served.url, keys["star"], call("data_update_settings", {"settings": {}}))
    assert status == 403 and 'scope="tools:update_settings"' in headers["www-authenticate"]
    status, headers, _ = raw_post(served.url, keys["star"], call("compute_load_model", {"model": DEFAULT_MODEL}))
    assert status == 403 and 'scope="tools:load_model"' in headers["www-authenticate"]
    # Scopes name a tool by its own name, whatever the gateway calls it.
    generate = call("compute_text_generate", {"prompt": "Hi", "max_tokens": 2})
    status, _, body = raw_post(served.url, keys["gen"], generate)
    assert status == 200, body


@pytest.mark.parametrize(
    "params",
    [
        {"notifications": {"resourceSubscriptions": ["jetson://config/settings"]}},
        {"filter": {"resourceSubscriptions": ["jetson://config/settings"]}},
        {"resourceSubscriptions": ["jetson://config/settings"]},
    ],
    ids=["notifications", "filter", "top-level"],
)
async def test_every_listen_shape_is_authorized(secured, params):
    served, keys = secured
    listen = {"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": params}
    status, headers, _ = raw_post(served.url, keys["gen"], listen, {"MCP-Protocol-Version": "2026-07-28"})
    assert status == 403, status
    assert 'scope="resources:jetson://config/settings"' in headers["www-authenticate"]
