"""Text generation with the real default model, through `jetsonmind serve`'s
gateway, driven by the official Python MCP SDK: answers, progress,
cancellation and concurrent calls, in both protocol eras."""

import json
import urllib.request

import anyio
import pytest
from mcp import Client, StdioServerParameters

from conftest import cancel_once_started, start_serve, stop_serve

pytestmark = pytest.mark.anyio


async def test_a_coherent_answer_with_progress(transport, mode):
    updates = []

    async def on_progress(progress, total, message):
        updates.append((progress, total, message))

    async with Client(transport, mode=mode) as client:
        result = await client.call_tool(
            "text_generate",
            {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 32},
            progress_callback=on_progress,
        )
    assert not result.is_error, result.content
    answer = result.content[0].text
    assert "Paris" in answer
    out = result.structured_content
    assert out["text"] == answer
    assert out["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] >= 3
    assert out["timings"]["generation_tokens_per_second"] > 0
    assert updates, "no progress notifications arrived"
    assert all(total == 32 for _, total, _ in updates)
    counts = [progress for progress, _, _ in updates]
    assert counts == sorted(counts)
    assert answer.startswith(updates[0][2])


async def test_two_concurrent_calls_both_finish(transport, mode):
    answers = {}

    async def ask(client, key, prompt):
        result = await client.call_tool("text_generate", {"prompt": prompt, "temperature": 0, "max_tokens": 24})
        assert not result.is_error, result.content
        answers[key] = result.content[0].text

    async with Client(transport, mode=mode) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(ask, client, "fruit", "Name a fruit.")
            group.start_soon(ask, client, "animal", "Name an animal.")
    assert answers["fruit"] and answers["animal"]


@pytest.fixture
def one_slot(binary, data_dir, tmp_path):
    """A server that runs one generation and queues none: a held slot shows as "busy"."""
    served = start_serve(
        binary,
        data_dir,
        tmp_path / "serve.log",
        {"JETSONMIND_COMPUTE__PARALLEL": "1", "JETSONMIND_COMPUTE__QUEUE_DEPTH": "0"},
    )
    yield served
    stop_serve(served)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("via", ["http", "stdio"])
async def test_cancelling_stops_the_generation(one_slot, binary, data_dir, mode, via):
    if via == "http":
        target = one_slot.url
    else:
        target = StdioServerParameters(
            command=str(binary),
            args=["serve", "--stdio", "--data-dir", str(data_dir)],
            env={"JETSONMIND_COMPUTE__PARALLEL": "1", "JETSONMIND_COMPUTE__QUEUE_DEPTH": "0"},
        )
    started = anyio.Event()

    async def on_progress(progress, total, message):
        started.set()

    story = {"prompt": "Write a very long story about a dragon, with many chapters.", "max_tokens": 2000, "temperature": 0}
    async with Client(target, mode=mode) as client:
        await cancel_once_started(
            lambda: client.call_tool("text_generate", story, progress_callback=on_progress),
            started,
            "a 2000-token story",
        )

        # The only slot must come free at once: a story still generating would
        # make this call "busy" for many seconds.
        for _ in range(30):
            result = await client.call_tool("text_generate", {"prompt": "Say hi.", "max_tokens": 8})
            if not result.is_error:
                break
            assert "busy" in result.content[0].text, result.content[0].text
            await anyio.sleep(0.1)
        assert not result.is_error, result.content[0].text


async def test_repeated_deterministic_calls_come_from_the_cache(binary, data_dir, tmp_path):
    served = start_serve(binary, data_dir, tmp_path / "serve.log")
    try:
        async with Client(served.url, mode="auto") as client:
            args = {"prompt": "Name a planet.", "temperature": 0, "max_tokens": 16}
            first = await client.call_tool("text_generate", args)
            second = await client.call_tool("text_generate", args)
            assert (first.structured_content["cached"], second.structured_content["cached"]) == (False, True)
            assert first.content[0].text == second.content[0].text
            report = json.loads((await client.read_resource("jetson://cache/inference")).contents[0].text)
            assert (report["hits"], report["misses"], report["entries"]) == (1, 1, 1)
            assert report["recent"][0]["tool"] == "text_generate"
    finally:
        stop_serve(served)


async def test_calls_show_in_analytics_and_prometheus_metrics(served):
    async with Client(served.url, mode="auto") as client:
        result = await client.call_tool("text_generate", {"prompt": "Say hello.", "max_tokens": 8})
        assert not result.is_error
        await client.call_tool("text_generate", {"prompt": 1})  # a schema violation counts as an error
        analytics = json.loads((await client.read_resource("jetson://performance/analytics")).contents[0].text)
    series = {(s["server"], s["tool"], s["model"]): s for s in analytics["series"]}
    ok = series[("jetsonmind-compute", "text_generate", "SmolLM2-135M-Instruct.Q4_1.gguf")]
    assert ok["calls"] >= 1 and ok["completion_tokens"] >= 1
    assert ok["windows"]["1m"]["p50_ms"] > 0
    assert ok["windows"]["1m"]["tokens_per_second"] > 0
    # The gateway checked the arguments and refused the call before compute saw it.
    assert series[("jetsonmind-gateway", "text_generate", "")]["errors"] >= 1

    with urllib.request.urlopen(served.url.removesuffix("/mcp") + "/metrics", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain")
        metrics = response.read().decode()
    labels = 'server="jetsonmind-compute",tool="text_generate",model="SmolLM2-135M-Instruct.Q4_1.gguf"'
    assert f'jetsonmind_tool_calls_total{{{labels},outcome="ok"}}' in metrics
    assert f'jetsonmind_tool_call_duration_seconds{{{labels},quantile="0.99"}}' in metrics
    assert "# TYPE jetsonmind_completion_tokens_total counter" in metrics
