"""Three compute replicas (separate `jetsonmind compute` processes) behind
`jetsonmind serve`'s gateway and control plane, driven by the official Python
MCP SDK: one replica is killed with SIGKILL while a stream of real
text_generate calls runs, and not one call is lost."""

import json
import os
import signal

import anyio
import pytest
from mcp import Client

from conftest import NO_CACHE, raw_post, start_jetsonmind, stop_serve

pytestmark = pytest.mark.anyio

CALLS = 24
AT_ONCE = 3
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What do bees make?",
    "What is two plus two?",
]


@pytest.fixture
def cluster(binary, data_dir, tmp_path):
    """Three compute replicas, and `jetsonmind serve` routing among them (no local one)."""
    replicas = [
        start_jetsonmind(
            binary,
            ["compute", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
            tmp_path / f"compute-{i}.log",
            NO_CACHE,
        )
        for i in range(3)
    ]
    env = {
        **NO_CACHE,
        "JETSONMIND_CONTROL__LOCAL_REPLICA": "false",
        "JETSONMIND_CONTROL__REPLICAS": json.dumps([r.url for r in replicas]),
        "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500",
    }
    gateway = start_jetsonmind(
        binary, ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)], tmp_path / "serve.log", env
    )
    yield gateway, replicas
    stop_serve(gateway)
    for replica in replicas:
        if replica.process.poll() is None:
            replica.process.kill()
            replica.process.wait()


async def health(client):
    result = await client.call_tool("monitor_health", {})
    assert not result.is_error, result
    return result.structured_content


async def wait_for(client, what, check, timeout=20):
    with anyio.fail_after(timeout):
        while True:
            state = await health(client)
            if check(state):
                return state
            await anyio.sleep(0.2)


async def test_killing_a_replica_during_a_stream_of_calls_loses_none(cluster):
    gateway, replicas = cluster
    by_url = {r.url: r for r in replicas}
    async with Client(gateway.url, mode="auto") as client:
        await wait_for(client, "three healthy replicas", lambda s: s["healthy"] == 3)
        results = []
        done = anyio.Event()
        killed = {}

        async def one_call(i, limit):
            async with limit:
                result = await client.call_tool(
                    "text_generate",
                    {"prompt": QUESTIONS[i % len(QUESTIONS)], "max_tokens": 24, "temperature": 0},
                )
                results.append(result)
                if len(results) == CALLS:
                    done.set()

        async def kill_a_busy_replica():
            # After a few answers, SIGKILL a replica that has calls in flight.
            while len(results) < 4:
                await anyio.sleep(0.05)
            with anyio.fail_after(30):
                while True:
                    state = await health(client)
                    busy = [r for r in state["replicas"] if r["outstanding"] > 0 and r["up"]]
                    if busy:
                        victim = busy[0]
                        by_url[victim["endpoint"]].process.send_signal(signal.SIGKILL)
                        killed.update(victim)
                        return
                    await anyio.sleep(0.02)

        limit = anyio.Semaphore(AT_ONCE)
        async with anyio.create_task_group() as group:
            group.start_soon(kill_a_busy_replica)
            for i in range(CALLS):
                group.start_soon(one_call, i, limit)

        assert killed, "no replica was caught with calls in flight"
        assert len(results) == CALLS
        failures = [r for r in results if r.is_error]
        assert not failures, [r.content for r in failures]
        for result in results:
            assert result.structured_content["text"].strip(), result
        routes = [r.meta["jetsonmind/route"][-1] for r in results]
        retried = [route for route in routes if route["attempts"] > 1]
        assert retried, f"the calls in flight on {killed['name']} should have been retried: {routes}"
        assert all(route["replica"] != killed["name"] for route in retried)
        served_by = {route["replica"] for route in routes}
        assert len(served_by) >= 2, served_by

        state = await wait_for(client, "the victim marked down", lambda s: s["healthy"] == 2)
        victim = next(r for r in state["replicas"] if r["name"] == killed["name"])
        assert not victim["up"]
        assert victim["failed"] >= 1

        # Routing shows the decision: the dead replica is out, and why.
        result = await client.call_tool("route_request", {"tool": "text_generate", "arguments": {"prompt": "hi"}})
        decision = result.structured_content["decision"]
        assert killed["name"] not in decision["order"]
        excluded = next(c for c in decision["candidates"] if c["replica"] == killed["name"])
        assert excluded["why"].startswith("down"), excluded


async def test_aggregate_responses_asks_every_replica(cluster):
    gateway, _ = cluster
    async with Client(gateway.url, mode="legacy") as client:
        await wait_for(client, "three healthy replicas", lambda s: s["healthy"] == 3)
        result = await client.call_tool(
            "aggregate_responses",
            {
                "tool": "text_generate",
                "arguments": {"prompt": "What is the capital of France?", "max_tokens": 12, "temperature": 0},
                "strategy": "majority",
            },
        )
        assert not result.is_error, result.content
        answer = result.structured_content
        # Greedy decoding of the same model: every replica says the same.
        assert answer["asked"] == 3 and answer["votes"] == 3
        assert "Paris" in answer["answer"]["text"]

        result = await client.call_tool(
            "aggregate_responses",
            {"tool": "text_generate", "arguments": {"prompt": "Say hi.", "max_tokens": 4}, "strategy": "first"},
        )
        assert not result.is_error and result.structured_content["asked"] == 3
        assert result.structured_content["replica"] in {"compute-1", "compute-2", "compute-3"}
        assert result.structured_content["answer"]["text"]

        result = await client.call_tool(
            "aggregate_responses",
            {"tool": "text_generate", "arguments": {"prompt": "Say hi.", "max_tokens": 4}, "strategy": "all"},
        )
        assert {a["replica"] for a in result.structured_content["answers"]} == {
            "compute-1",
            "compute-2",
            "compute-3",
        }


async def test_scale_cluster_starts_and_stops_replicas_of_its_own(binary, data_dir, tmp_path):
    served = start_jetsonmind(
        binary,
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        tmp_path / "serve.log",
        {**NO_CACHE, "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500"},
    )
    try:
        async with Client(served.url, mode="auto") as client:
            added = await client.call_tool("scale_cluster", {"action": "add", "count": 2})
            assert not added.is_error, added.content
            names = [a["name"] for a in added.structured_content["added"]]
            assert names == ["compute-started-1", "compute-started-2"]
            assert set(added.structured_content["up"]) == {"compute-local", *names}
            pids = {int(r["report"]["replica"].split(":")[1]) for r in (await health(client))["replicas"]}
            assert len(pids) == 3, "three processes serve"

            # Work spreads over them (least loaded first among equals).
            served_by = set()
            with anyio.fail_after(120):
                async with anyio.create_task_group() as group:
                    for i in range(6):

                        async def one(i=i):
                            result = await client.call_tool(
                                "text_generate", {"prompt": QUESTIONS[i % 4], "max_tokens": 16, "temperature": 0}
                            )
                            assert not result.is_error, result.content
                            served_by.add(result.meta["jetsonmind/route"][-1]["replica"])

                        group.start_soon(one)
            assert len(served_by) >= 2, served_by

            too_many = await client.call_tool("scale_cluster", {"action": "add", "count": 16})
            assert too_many.is_error and "max_replicas" in too_many.content[0].text

            removed = await client.call_tool("scale_cluster", {"action": "remove", "count": 2})
            assert [r["name"] for r in removed.structured_content["removed"]] == list(reversed(names))
            assert all(r["drained"] for r in removed.structured_content["removed"])
            state = await health(client)
            assert [r["name"] for r in state["replicas"]] == ["compute-local"]
            for pid in pids - {served.process.pid}:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
    finally:
        stop_serve(served)


async def test_started_replicas_serve_a_gateway_without_a_local_one_and_only_it(binary, data_dir, tmp_path):
    """Review items 4 and 11: a replica `scale_cluster` starts requires the
    secret its launcher holds, and with `control.local_replica = false` its
    tools reach the gateway's list."""
    served = start_jetsonmind(
        binary,
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        tmp_path / "serve.log",
        {
            **NO_CACHE,
            "JETSONMIND_CONTROL__LOCAL_REPLICA": "false",
            "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500",
            # The client keeps a list for its ttlMs: let it see the change.
            "JETSONMIND_MCP__LIST_TTL_MS": "0",
        },
    )
    try:
        async with Client(served.url, mode="auto") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "text_generate" not in tools, "no compute replica yet"
            added = await client.call_tool("scale_cluster", {"action": "add", "count": 1})
            assert not added.is_error, added.content
            endpoint = added.structured_content["added"][0]["endpoint"]

            with anyio.fail_after(30):
                while "text_generate" not in {t.name for t in (await client.list_tools()).tools}:
                    await anyio.sleep(0.2)
            answer = await client.call_tool("text_generate", {"prompt": "Hi", "max_tokens": 4, "temperature": 0})
            assert not answer.is_error, answer.content
            assert answer.meta["jetsonmind/route"][-1]["replica"] == "compute-started-1"

            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            assert raw_post(endpoint, None, ping)[0] == 401, "no credentials"
            assert raw_post(endpoint, "0" * 64, ping)[0] == 401, "a guessed secret"
            assert raw_post(endpoint, "jm_00000000_" + "0" * 64, ping)[0] == 401, "a made-up key"

            removed = await client.call_tool("scale_cluster", {"action": "remove", "count": 1})
            assert not removed.is_error, removed.content
    finally:
        stop_serve(served)


async def test_one_request_id_follows_a_call_to_its_replica(binary, data_dir, tmp_path):
    """A call's W3C trace id is its request id: continued from the caller's
    `traceparent`, carried to the replica that runs it, in the log lines of
    both processes, and in the result's `_meta`."""
    debug = ["--log", "info,jetsonmind_core=debug"]
    replica = start_jetsonmind(
        binary, ["compute", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *debug], tmp_path / "compute.log"
    )
    env = {"JETSONMIND_CONTROL__LOCAL_REPLICA": "false", "JETSONMIND_CONTROL__REPLICAS": json.dumps([replica.url])}
    served = start_jetsonmind(
        binary, ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *debug], tmp_path / "serve.log", env
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        generate = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "text_generate",
                "arguments": {"prompt": "Hi", "max_tokens": 2},
                "_meta": {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            },
        }
        status, _, body = raw_post(served.url, None, generate)
        assert status == 200, body
        meta = json.loads(body)["result"]["_meta"]
        assert meta["jetsonmind/requestId"] == trace_id
        assert meta["traceparent"].split("-")[1] == trace_id
        assert meta["jetsonmind/route"][-1]["replica"] == "compute-1"
        untraced = raw_post(served.url, None, {**generate, "params": {**generate["params"], "_meta": {}}})[2]
        assert json.loads(untraced)["result"]["_meta"]["jetsonmind/requestId"] not in ("", trace_id)
    finally:
        stop_serve(served)
        stop_serve(replica)
    for log in [served.log, replica.log]:
        lines = [line for line in log.read_text().splitlines() if "tool call done" in line]
        assert any(f"request_id={trace_id}" in line and "text_generate" in line for line in lines), (log, lines)
