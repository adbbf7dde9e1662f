"""Health probes and draining on a real `jetsonmind serve`: /healthz and /readyz answer without a key
while everything else needs one, /readyz says why not until the default model is in the store, and on
SIGTERM a call in flight finishes while new requests get 503, /readyz says draining and /healthz stays
up, then the server exits without waiting out its grace period; and a rolling restart of the compute
replicas behind a gateway, one at a time by SIGTERM, while calls stream through it, loses none."""

import json
import signal
import time
import urllib.error
import urllib.request

import anyio
import pytest

from mcp import Client

from conftest import (
    NO_CACHE,
    call,
    create_key,
    default_model,
    eventually,
    import_model,
    raw_post,
    start_jetsonmind,
    start_serve,
    stop_process,
    stop_serve,
)
from natscluster import free_ports

pytestmark = pytest.mark.anyio


def get(url, path):
    """(status, body) of GET `path` on the server of MCP endpoint `url`, without credentials."""
    try:
        with urllib.request.urlopen(url.replace("/mcp", path), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_probes_need_no_key_and_readyz_waits_for_the_default_model(binary, tmp_path):
    data = tmp_path / "data"
    create_key(binary, data, "ops", "admin")
    served = start_serve(binary, data, tmp_path / "serve.log", {"JETSONMIND_AUTH__REQUIRED": "true"})
    try:
        assert get(served.url, "/healthz") == (200, '{"status":"alive"}')
        status, body = get(served.url, "/readyz")
        assert status == 503 and json.loads(body)["reason"] == "the default model is not in the model store"
        assert get(served.url, "/metrics")[0] == 401, "only the probes are open"

        import_model(binary, data, default_model(), "--link")
        assert get(served.url, "/readyz") == (200, '{"status":"ready"}')
    finally:
        stop_serve(served)


async def test_sigterm_lets_the_call_in_flight_finish_and_turns_new_requests_away(binary, tmp_path):
    data = tmp_path / "data"
    import_model(binary, data, default_model(), "--link")
    # A grace far longer than the call: the server must exit when the call is done, not at the grace.
    served = start_serve(binary, data, tmp_path / "serve.log", {"JETSONMIND_HTTP__DRAIN_GRACE_MS": "120000"})
    warm = raw_post(served.url, None, call("text_generate", {"prompt": "Hi", "max_tokens": 2}))
    assert warm[0] == 200, warm
    long = call("text_generate", {"prompt": "Tell a long story about a river.", "max_tokens": 1500, "temperature": 0})
    answer = {}

    async def generate():
        # 1500 tokens take 12 s on a fast 2-core machine and twice that on a slow one: wait for them.
        answer["reply"] = await anyio.to_thread.run_sync(lambda: raw_post(served.url, None, long, timeout=120))

    try:
        async with anyio.create_task_group() as calls:
            calls.start_soon(generate)
            await anyio.sleep(1.0)
            served.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await anyio.sleep(0.5)
            assert "reply" not in answer, "the call ended before the signal: make it longer"
            status, headers, _ = raw_post(served.url, None, call("text_generate", {"prompt": "Hi"}))
            assert status == 503 and headers["retry-after"] == "1", (status, headers)
            assert get(served.url, "/readyz") == (503, '{"reason":"draining","status":"not ready"}')
            assert get(served.url, "/healthz")[0] == 200
        status, _, body = answer["reply"]
        result = json.loads(body)["result"]
        assert status == 200 and not result.get("isError"), body
        assert result["structuredContent"]["usage"]["completion_tokens"] > 0
        assert served.process.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 60, "it waited for the grace, not for the call"
    finally:
        if served.process.poll() is None:
            stop_serve(served)
    assert "no call in flight: shutting down" in served.log.read_text()


class Replicas:
    """`count` `jetsonmind compute` processes on fixed loopback ports (a restarted one comes back where
    the gateway looks for it), sharing `data`."""

    def __init__(self, binary, data, logs, count):
        self.binary, self.data, self.logs = binary, data, logs
        self.ports = free_ports(count)
        self.starts = 0
        self.running = [self.start(port) for port in self.ports]

    def start(self, port):
        self.starts += 1
        args = ["compute", "--listen", f"127.0.0.1:{port}", "--data-dir", str(self.data)]
        # One decode thread each: three engines share this machine's cores.
        env = {**NO_CACHE, "JETSONMIND_COMPUTE__THREADS": "1"}
        return start_jetsonmind(self.binary, args, self.logs / f"compute-{port}.{self.starts}.log", env)

    def restart(self, i):
        """SIGTERM replica i (it drains: its calls finish), then start it again; whether it stopped on
        SIGTERM alone."""
        drained = stop_process(self.running[i].process, grace=40)
        self.running[i] = self.start(self.ports[i])
        return drained

    def stop(self):
        for replica in self.running:
            stop_process(replica.process)


async def test_a_rolling_restart_of_the_replicas_loses_no_call(binary, data_dir, tmp_path):
    replicas = Replicas(binary, data_dir, tmp_path, 3)
    env = {
        **NO_CACHE,
        "JETSONMIND_CONTROL__LOCAL_REPLICA": "false",
        "JETSONMIND_CONTROL__REPLICAS": json.dumps([r.url for r in replicas.running]),
        "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500",
    }
    args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    gateway = start_jetsonmind(binary, args, tmp_path / "serve.log", env)
    try:
        async with Client(gateway.url, mode="auto") as client:

            async def all_healthy():
                health = await client.call_tool("monitor_health", {})
                return health.structured_content["healthy"] == 3

            await eventually("three healthy replicas", all_healthy)
            results, restarted = [], []
            rolling = anyio.Event()

            async def caller(k):
                i = 0
                while not rolling.is_set():
                    prompt = f"Count to {k + i % 5}."
                    results.append(await client.call_tool("text_generate", {"prompt": prompt, "max_tokens": 8}))
                    i += 1

            async with anyio.create_task_group() as calls:
                for k in range(3):
                    calls.start_soon(caller, k)
                for i in range(3):
                    await anyio.sleep(1)
                    restarted.append(await anyio.to_thread.run_sync(replicas.restart, i))
                    await eventually(f"replica {i} back", all_healthy)
                rolling.set()

        failed = [r.content for r in results if r.is_error]
        assert not failed, failed
        assert restarted == [True, True, True], "each replica drained and stopped on SIGTERM"
        assert len(results) >= 9, f"calls streamed through the restarts: {len(results)}"
        print(f"\nrolling restart of 3 replicas: {len(results)} calls, none lost")
    finally:
        stop_serve(gateway)
        replicas.stop()
