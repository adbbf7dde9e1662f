"""manage_resources(allocation_strategy) on a real `jetsonmind serve`, driven by the official Python
MCP SDK: the strategy is saved as a setting the compute server follows at once. `preload` loads the
models recent calls used most, `pinned` keeps its models loaded, `on_demand` unloads a model as soon
as its call ends."""

import pytest
from mcp import Client

from conftest import (
    NO_CACHE,
    default_model,
    eventually,
    import_model,
    make_data_dir,
    read_json,
    start_serve,
    stop_serve,
)

pytestmark = pytest.mark.anyio

SECOND = "second.gguf"


@pytest.fixture
def served(binary, tmp_path):
    data = make_data_dir(binary, tmp_path / "data")
    # The real model under a second name: two models as far as placement goes.
    import_model(binary, data, default_model(), "--link", "--name", SECOND)
    served = start_serve(binary, data, tmp_path / "serve.log", {**NO_CACHE, "JETSONMIND_MCP__LIST_TTL_MS": "0"})
    yield served, data
    stop_serve(served)


async def manage(client, arguments):
    result = await client.call_tool("manage_resources", arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def loaded(client):
    status = await read_json(client, "jetson://compute/status")
    return {model["name"]: model["pinned"] for model in status["loaded"]}


async def generate(client, model):
    result = await client.call_tool("text_generate", {"prompt": "Hi", "model": model, "max_tokens": 2})
    assert not result.is_error, result.content


async def test_strategies_are_saved_and_followed(served):
    server, data = served
    first = default_model().name
    async with Client(server.url, mode="auto") as client:
        for _ in range(3):
            await generate(client, SECOND)
        await generate(client, first)
        await client.call_tool("unload_model", {"model": SECOND})
        await client.call_tool("unload_model", {"model": first})
        assert await loaded(client) == {}

        preload = await manage(client, {"allocation_strategy": "preload"})
        assert preload["update"]["effective_now"] == ["compute.allocation"]
        ranked = preload["preloaded"]["recent_calls"]
        assert ranked[SECOND] >= 3 and ranked[first] >= 1, ranked
        assert [entry["model"] for entry in preload["preloaded"]["loaded"]] == [SECOND, first]
        assert all(entry["ok"] for entry in preload["preloaded"]["loaded"]), preload
        assert await loaded(client) == {SECOND: False, first: False}

        pinned = await manage(client, {"allocation_strategy": "pinned", "models": [SECOND]})
        assert set(pinned["update"]["effective_now"]) == {"compute.allocation", "compute.pinned_models"}
        await eventually("the second model pinned", lambda: pinned_now(client))
        assert 'allocation = "pinned"' in (data / "settings.toml").read_text()

        await manage(client, {"allocation_strategy": "on_demand"})
        await eventually("idle models unloaded", lambda: nothing_loaded(client))
        await generate(client, first)
        assert await loaded(client) == {}, "unloaded as soon as its call ended"

        refused = await client.call_tool("manage_resources", {"allocation_strategy": "pinned"})
        assert refused.is_error and "needs `models`" in refused.content[0].text
        refused = await client.call_tool("manage_resources", {"allocation_strategy": "balanced", "models": [first]})
        assert refused.is_error and "`pinned` only" in refused.content[0].text


async def pinned_now(client):
    return (await loaded(client)).get(SECOND) is True


async def nothing_loaded(client):
    return await loaded(client) == {}
