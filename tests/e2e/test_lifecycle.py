"""Health probes and draining on a real `jetsonmind serve`: /healthz and /readyz answer without a key
while everything else needs one, /readyz says why not until the default model is in the store, and on
SIGTERM a call in flight finishes while new requests get 503, /readyz says draining and /healthz stays
up, then the server exits without waiting out its grace period."""

import json
import signal
import time
import urllib.error
import urllib.request

import anyio
import pytest

from conftest import call, create_key, default_model, import_model, raw_post, start_serve, stop_serve

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
        answer["reply"] = await anyio.to_thread.run_sync(raw_post, served.url, None, long)

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
