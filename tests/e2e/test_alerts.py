"""monitor_health's alerts on a real `jetsonmind serve`, driven by the official Python MCP SDK through
the gateway: an alert on a figure of this machine fires, a `subscriptions/listen` subscriber of
jetson://control/alerts hears it, a handshake-era session subscribed to it is sent a warning log
message naming the alert, `/metrics` shows the gauge, and the alert outlives a restart."""

import json
import urllib.request

import anyio
import pytest
from mcp import Client

from conftest import make_data_dir, read_json, start_serve, stop_serve

pytestmark = pytest.mark.anyio

ALERTS = "jetson://control/alerts"
FAST = {"JETSONMIND_CONTROL__ALERT_INTERVAL_MS": "200"}


async def monitor(client, arguments):
    result = await client.call_tool("monitor_health", arguments)
    assert not result.is_error, result.content
    return result.structured_content


def metrics(url):
    with urllib.request.urlopen(url.replace("/mcp", "/metrics")) as response:
        return response.read().decode()


async def test_an_alert_fires_is_heard_counted_and_kept(binary, tmp_path):
    data = make_data_dir(binary, tmp_path / "data")
    served = start_serve(binary, data, tmp_path / "serve.log", FAST)
    try:
        async with Client(served.url, mode="auto") as client:
            device = await monitor(client, {"component": "device"})
            figures = device["readings"][0]["figures"]
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            total, available = (int(info[k].split()[0]) for k in ("MemTotal", "MemAvailable"))
            assert figures["memory_used_percent"] == pytest.approx(100 * (1 - available / total), abs=5)

            # A line this machine is past: memory in use above 0.1%.
            line = {"metric": "memory_used_percent", "above": 0.1}
            logged = []
            told = anyio.Event()

            async def on_log(params):
                logged.append(params)
                told.set()

            async with (
                Client(served.url, mode="legacy", logging_callback=on_log) as watcher,
                client.listen(resource_subscriptions=[ALERTS]) as sub,
            ):
                await watcher.subscribe_resource(ALERTS)
                kept = await monitor(client, {"component": "device", "threshold": line, "alert": "memory"})
                assert kept["alerts"][0]["name"] == "memory"
                with anyio.fail_after(15):
                    async for event in sub:
                        assert event.uri == ALERTS
                        alert = (await read_json(client, ALERTS))["alerts"][0]
                        if alert["firing"]:
                            break
                    await told.wait()
            [message] = logged
            assert message.level == "warning" and message.logger == "jetsonmind.alerts"
            assert message.data["uri"] == ALERTS and message.data["alert"] == "memory"
            assert "memory_used_percent" in message.data["message"]
            assert alert["breaches"][0]["id"] == "device" and alert["fired"] == 1
            assert 'jetsonmind_alert_firing{alert="memory"} 1' in metrics(served.url)
            health = await monitor(client, {})
            assert [a["name"] for a in health["alerts_firing"]] == ["memory"]
    finally:
        stop_serve(served)
    assert json.loads((data / "alerts.json").read_text())[0]["name"] == "memory"

    served = start_serve(binary, data, tmp_path / "again.log", FAST)
    try:
        async with Client(served.url, mode="auto") as client:
            alerts = (await read_json(client, ALERTS))["alerts"]
            assert [a["name"] for a in alerts] == ["memory"], "kept across a restart"
    finally:
        stop_serve(served)
