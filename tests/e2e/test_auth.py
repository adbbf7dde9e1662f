"""A gateway that requires authentication, driven by the official Python MCP
SDK with API keys: unauthenticated and wrong-scope calls are refused with the
right HTTP status and challenge, lists show only what a key may use, admin
actions need the admin scope, per-client rate limits answer 429, and a client
connection can be listed and closed."""

import json
import subprocess

import anyio
import httpx2
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


@pytest.fixture(scope="module")
def secured(binary, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("auth-data")
    model = MODELS / DEFAULT_MODEL
    subprocess.run(
        [str(binary), "--data-dir", str(data_dir), "models", "import", str(model), "--link"],
        capture_output=True,
        check=True,
    )
    keys = {
        "admin": create_key(binary, data_dir, "ops", "admin"),
        "user": create_key(binary, data_dir, "app", "tools:*", "resources:*"),
        "narrow": create_key(binary, data_dir, "bot", "tools:validate_request"),
        # multi_modal_inference and describe call image_analyze and text_generate as their caller.
        "pictures": create_key(binary, data_dir, "pics", "tools:multi_modal_inference", "tools:image_analyze"),
        "answers": create_key(binary, data_dir, "qa", "tools:multi_modal_inference", "tools:text_generate"),
    }
    listed = subprocess.run(
        [str(binary), "--data-dir", str(data_dir), "keys", "list"], capture_output=True, text=True, check=True
    ).stdout
    stored = (data_dir / "api_keys.json").read_text()
    assert all(key not in stored and key not in listed for key in keys.values()), "keys are kept hashed"
    env = {
        **NO_CACHE,
        "JETSONMIND_AUTH__REQUIRED": "true",
        "JETSONMIND_HTTP__RATE_LIMIT_PER_SECOND": "1000",
        "JETSONMIND_HTTP__RATE_LIMIT_BURST": "1000",
    }
    served = start_jetsonmind(
        binary,
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        tmp_path_factory.mktemp("auth-logs") / "serve.log",
        env,
    )
    yield served, keys, data_dir
    stop_serve(served)
    log = served.log.read_text()
    assert all(key not in log for key in keys.values()), "secrets never reach the log"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_unauthenticated_calls_get_401_with_a_challenge(secured, mode):
    served, _, _ = secured
    for token in [None, "jm_00000000_" + "0" * 64, "not-a-key"]:
        statuses = Statuses()
        http, client = client_with(served.url, token, statuses, mode)
        async with http:
            # The SDK raises its error inside an exception group.
            with pytest.raises(Exception):
                async with client:
                    pass
        assert statuses.seen, "the server answered with an HTTP error"
        status, challenge = statuses.seen[-1]
        assert status == 401
        assert challenge.startswith("Bearer ")
        if token:
            assert 'error="invalid_token"' in challenge


async def test_wrong_scope_gets_403_and_lists_show_only_what_a_key_may_use(secured):
    served, keys, _ = secured
    statuses = Statuses()
    http, client = client_with(served.url, keys["narrow"], statuses)
    async with http, client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert tools == {"validate_request", "handle_auth"}
        assert (await client.list_resources()).resources == []
        ok = await client.call_tool("validate_request", {"tool": "validate_request", "arguments": {}})
        assert not ok.is_error
        whoami = await client.call_tool("handle_auth", {"action": "whoami"})
        assert whoami.structured_content["principal"]["name"] == "bot"
        assert whoami.structured_content["principal"]["method"] == "api_key"
        with pytest.raises(MCPError):
            await client.call_tool("text_generate", {"prompt": "hi", "max_tokens": 2})
    status, challenge = statuses.seen[-1]
    assert status == 403
    assert 'error="insufficient_scope"' in challenge and 'scope="tools:text_generate"' in challenge

    status, headers, body = raw_post(served.url, keys["narrow"], call("monitor_health", {}))
    assert status == 403
    assert 'scope="tools:monitor_health"' in headers["www-authenticate"]
    assert json.loads(body)["error"] == "insufficient_scope"
    status, _, _ = raw_post(
        served.url,
        keys["narrow"],
        {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "jetson://system/metrics"}},
    )
    assert status == 403


async def test_admin_actions_need_the_admin_scope(secured):
    served, keys, _ = secured
    statuses = Statuses()
    http, client = client_with(served.url, keys["user"], statuses)
    async with http, client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "text_generate" in tools and "monitor_health" in tools
        assert "scale_cluster" not in tools and "protocol_bridge" not in tools
        health = await client.call_tool("monitor_health", {})
        assert health.structured_content["healthy"] == 1
        refused = await client.call_tool("handle_auth", {"action": "create_key", "scopes": ["admin"]})
        assert refused.is_error and "admin" in refused.content[0].text
        with pytest.raises(MCPError):
            await client.call_tool("scale_cluster", {"action": "status"})
    assert statuses.seen[-1][0] == 403

    statuses = Statuses()
    http, client = client_with(served.url, keys["admin"], statuses)
    async with http, client:
        made = await client.call_tool(
            "handle_auth", {"action": "create_key", "name": "temp", "scopes": ["tools:validate_request"]}
        )
        assert not made.is_error, made.content
        new_key = made.structured_content["created"]["key"]
        scale = await client.call_tool("scale_cluster", {"action": "status"})
        assert not scale.is_error
    status, _, _ = raw_post(served.url, new_key, call("validate_request", {"tool": "validate_request"}))
    assert status == 200

    async with httpx2.AsyncClient() as plain:
        metrics = await plain.get(served.url.replace("/mcp", "/metrics"), headers={"Authorization": f"Bearer {keys['user']}"})
        assert metrics.status_code == 403
        metrics = await plain.get(served.url.replace("/mcp", "/metrics"), headers={"Authorization": f"Bearer {keys['admin']}"})
        assert metrics.status_code == 200 and "jetsonmind" in metrics.text


def test_openai_endpoint_takes_the_api_key_and_its_scopes(secured):
    import openai

    served, keys, _ = secured
    base = served.url.replace("/mcp", "/v1")
    allowed = openai.OpenAI(base_url=base, api_key=keys["user"])
    answer = allowed.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
    )
    assert answer.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=base, api_key=keys["narrow"]).models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="jm_00000000_nope").models.list()


async def test_client_connections_are_listed_and_can_be_closed(secured):
    served, keys, _ = secured
    statuses = Statuses()
    http, client = client_with(served.url, keys["admin"], statuses)
    async with http, client:
        listed = await client.call_tool("manage_connections", {"action": "list"})
        clients = listed.structured_content["clients"]
        mine = [c for c in clients if c["principal"] and c["principal"].startswith("key:")]
        assert mine and all(c["requests"] >= 1 for c in mine)
        victim = mine[0]["id"]
        closed = await client.call_tool("manage_connections", {"action": "close", "id": victim})
        assert closed.structured_content == {"closed": victim}
        # The close was answered, then the connection ended; the client
        # reconnects on its next request and the closed one is gone.
        for _ in range(40):
            listed = await client.call_tool("manage_connections", {"action": "list"})
            if victim not in [c["id"] for c in listed.structured_content["clients"]]:
                break
            await anyio.sleep(0.1)
        else:
            pytest.fail(f"connection {victim} still open: {listed.structured_content['clients']}")
        missing = await client.call_tool("manage_connections", {"action": "close", "id": 999999})
        assert missing.is_error


async def test_rate_limits_answer_429_per_client(binary, tmp_path):
    data_dir = tmp_path / "data"
    key = create_key(binary, data_dir, "burst", "tools:*")
    env = {"JETSONMIND_HTTP__RATE_LIMIT_PER_SECOND": "2", "JETSONMIND_HTTP__RATE_LIMIT_BURST": "3",
           "JETSONMIND_AUTH__REQUIRED": "true"}
    served = start_jetsonmind(
        binary, ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)], tmp_path / "serve.log", env
    )
    try:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        answers = [raw_post(served.url, key, ping) for _ in range(6)]
        statuses = [status for status, _, _ in answers]
        assert statuses[:3] == [200, 200, 200], statuses
        assert 429 in statuses[3:], statuses
        limited = next(headers for status, headers, _ in answers if status == 429)
        assert int(limited["retry-after"]) >= 1
        # Another client is not held back by this one.
        other = create_key(binary, data_dir, "other", "tools:*")
        assert raw_post(served.url, other, ping)[0] == 200
    finally:
        stop_serve(served)


def test_parallel_local_agents_are_not_throttled(served):
    """Review item 14: ten workers of a local agent, unauthenticated on
    loopback with the default limits, get no 429 (authenticated callers are
    limited per principal, above)."""
    from concurrent.futures import ThreadPoolExecutor

    workers, each = 10, 60
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}

    def worker(_):
        return [raw_post(served.url, None, ping)[0] for _ in range(each)]

    with ThreadPoolExecutor(workers) as pool:
        statuses = [s for batch in pool.map(worker, range(workers)) for s in batch]
    assert len(statuses) == workers * each
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}


async def test_tools_calling_tools_lend_no_rights(secured):
    """multi_modal_inference and image_analyze's describe call other tools as their caller: a key without the
    scope of one of them is refused there, as it would be calling it directly."""
    from test_vision import data_uri, png

    question = {"text": "", "image": data_uri(png(8, 8, (128, 128, 128))), "task": "What is it?"}
    served, keys, _ = secured
    for key, missing in (("pictures", "tools:text_generate"), ("answers", "tools:image_analyze")):
        http, client = client_with(served.url, keys[key], Statuses())
        async with http, client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("multi_modal_inference", question)
            assert missing in str(refused.value), refused.value
    http, client = client_with(served.url, keys["pictures"], Statuses())
    async with http, client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("image_analyze", {"image_data": question["image"], "analysis_type": "describe"})
        assert "tools:text_generate" in str(refused.value)
        measured = await client.call_tool("image_analyze", {"image_data": question["image"], "analysis_type": "properties"})
        assert not measured.is_error and measured.structured_content["width"] == 8
