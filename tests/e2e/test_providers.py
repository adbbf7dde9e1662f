"""An OpenAI-compatible provider (`[[hybrid.providers]]`) as a cloud replica of compute's text tools,
against llama.cpp's own llama-server, on a single device (`jetsonmind serve`, no cluster, no hub): a
model only the provider maps is served there with progress, over MCP and the gateway's OpenAI API; a
cancelled call stops the generation there; an edge_only call never reaches it; its API key is sent and
never logged."""

import anyio
import openai
import pytest
from mcp import Client

from conftest import DEFAULT_MODEL, cancel_once_started, start_serve, stop_serve
from natscluster import http_get, wait_until

pytestmark = pytest.mark.anyio

CLOUD_MODEL = "cloud-smol"  # mapped by the provider only; the device's store has no such model
PROVIDER = "llama"
KEY = "sk-e2e-provider-5d1f0c2b9a"
LONG = {"prompt": "Write a very long story about a dragon, with many chapters.", "model": CLOUD_MODEL, "temperature": 0}


def provider_env(llama_server, key_env=None):
    """`jetsonmind serve`'s environment: one provider mapping CLOUD_MODEL to llama-server's model."""
    provider = f'name = "{PROVIDER}", base_url = "{llama_server.base_url}", models = {{{CLOUD_MODEL} = "{DEFAULT_MODEL}"}}'
    if key_env:
        provider += f', api_key_env = "{key_env}"'
    return {"JETSONMIND_HYBRID__PROVIDERS": f"[{{{provider}}}]", "JETSONMIND_CACHE__ENABLED": "false"}


@pytest.fixture
def with_provider(binary, data_dir, tmp_path, llama_server):
    served = start_serve(binary, data_dir, tmp_path / "serve.log", provider_env(llama_server))
    yield served
    stop_serve(served)


def last_hop(result):
    return result.meta["jetsonmind/route"][-1]


async def test_a_model_only_the_provider_maps_is_served_there_with_progress(with_provider, llama_server):
    updates = []

    async def on_progress(progress, total, message):
        updates.append((progress, total, message))

    ask = {"prompt": "Describe the moon in one sentence.", "model": CLOUD_MODEL, "max_tokens": 32, "temperature": 0}
    async with Client(with_provider.url, mode="auto") as client:
        result = await client.call_tool("text_generate", ask, progress_callback=on_progress)
    assert not result.is_error, result.content
    hop = last_hop(result)
    assert (hop["tier"], hop["replica"]) == ("cloud", PROVIDER)
    answer = result.content[0].text
    out = result.structured_content
    assert answer.strip() and out["text"] == answer
    assert out["model"] == CLOUD_MODEL
    assert out["finish_reason"] in ("stop", "length")
    assert 1 <= out["usage"]["completion_tokens"] <= 32 and out["usage"]["prompt_tokens"] > 0
    assert out["timings"]["generation_tokens_per_second"] > 0
    assert len(updates) > 1, updates
    assert all(total == 32 for _, total, _ in updates)
    counts = [progress for progress, _, _ in updates]
    assert counts == sorted(counts)
    assert answer.startswith(updates[-1][2])
    assert llama_server.tokens_predicted() == out["usage"]["completion_tokens"]


def test_the_gateways_openai_api_streams_through_the_provider(with_provider, llama_server):
    base = with_provider.url.removesuffix("/mcp") + "/v1"
    client = openai.OpenAI(base_url=base, api_key="unused-on-loopback", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=CLOUD_MODEL,
            messages=[{"role": "user", "content": "Name a planet."}],
            temperature=0,
            max_tokens=24,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1, deltas
    assert "".join(deltas).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert llama_server.tokens_predicted() > 0


async def test_cancelling_a_call_stops_the_generation_at_the_provider(with_provider, llama_server):
    cap = 400
    # Left alone, this generation runs to the cap (the story goes on and on).
    whole = openai.OpenAI(base_url=llama_server.base_url, api_key="unused", max_retries=0).chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": LONG["prompt"]}], temperature=0, max_tokens=cap
    )
    assert whole.choices[0].finish_reason == "length", whole.choices[0].message.content
    before = llama_server.tokens_predicted()
    started = anyio.Event()

    async def on_progress(progress, total, message):
        started.set()

    async with Client(with_provider.url, mode="auto") as client:
        await cancel_once_started(
            lambda: client.call_tool("text_generate", {**LONG, "max_tokens": cap}, progress_callback=on_progress),
            started,
            f"a {cap}-token count",
        )
        # Still connected: the cancel itself, not a closed session, stops it.
        idle = lambda: wait_until(llama_server.slots_idle, "llama-server idle", context=llama_server.log.read_text)
        await anyio.to_thread.run_sync(idle)
    generated = llama_server.tokens_predicted() - before
    assert 0 < generated < cap / 2, generated


async def test_an_edge_only_call_never_reaches_the_provider(with_provider, llama_server):
    counters = ("prompt_tokens_total", "tokens_predicted_total")
    ask = {"prompt": "Say hello.", "model": CLOUD_MODEL, "max_tokens": 8}
    async with Client(with_provider.url, mode="auto") as client:
        before = [llama_server.metric(name) for name in counters]
        kept = await client.call_tool("text_generate", ask, meta={"jetsonmind/egress": {"edge_only": True}})
        # Served here or refused here (the device has no such model), never there.
        assert kept.is_error or last_hop(kept)["tier"] != "cloud", kept
        assert [llama_server.metric(name) for name in counters] == before
        # The same call without edge_only does reach it: what was watched would have moved.
        sent = await client.call_tool("text_generate", ask)
    assert not sent.is_error and last_hop(sent)["tier"] == "cloud", sent.content
    assert [llama_server.metric(name) for name in counters] != before


@pytest.mark.parametrize("llama_server", [{"api_key": KEY}], indirect=True)
async def test_the_providers_key_is_sent_and_never_logged(binary, data_dir, tmp_path, llama_server):
    status, _ = http_get(f"{llama_server.url}/metrics")
    assert status == 401, "llama-server must require the key"
    log = tmp_path / "serve.log"
    env = {**provider_env(llama_server, key_env="E2E_PROVIDER_KEY"), "E2E_PROVIDER_KEY": KEY, "RUST_LOG": "debug"}
    served = start_serve(binary, data_dir, log, env)
    try:
        async with Client(served.url, mode="auto") as client:
            ask = {"prompt": "Say hello.", "model": CLOUD_MODEL, "max_tokens": 8}
            result = await client.call_tool("text_generate", ask)
            assert not result.is_error, result.content
            assert last_hop(result)["tier"] == "cloud"
            health = await client.call_tool("monitor_health", {"replica": PROVIDER})
            assert KEY not in str(health.structured_content)
    finally:
        stop_serve(served)
    assert KEY not in log.read_text(errors="replace")
