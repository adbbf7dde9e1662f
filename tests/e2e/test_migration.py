"""The single -> cluster migration and the way back, as a user runs them: a single device with a
model of its own, a changed setting and an API key (auth required) is moved by
scripts/migrate_single_to_cluster.sh into a cluster of three nats-servers and two nodes; the key,
the setting and the model then work through another node, checked by the script and again here with
the official Python MCP SDK. scripts/migrate_cluster_to_single.sh takes it back with nothing lost."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import (
    DEFAULT_MODEL,
    MODELS,
    NO_CACHE,
    ROOT,
    connected,
    create_key,
    import_model,
    read_json,
    start_nodes,
    start_serve,
    stop_serve,
)

pytestmark = pytest.mark.anyio

ENV = {**NO_CACHE, "JETSONMIND_AUTH__REQUIRED": "true", "JETSONMIND_MCP__LIST_TTL_MS": "0"}
OWN_MODEL = "device-own-model"
STEPS = ["backup", "nats", "stop", "publish", "start", "validate"]


def run_script(name, binary, args, key, succeeds=True):
    """Run scripts/NAME as a user would; its output (stdout, or both streams when it must fail)."""
    env = {**os.environ, **ENV, "MIGRATED_KEY": key, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "scripts" / name), "--bin", str(binary), "--token-env", "MIGRATED_KEY", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert (done.returncode == 0) == succeeds, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert key not in done.stdout + done.stderr, "the key is never printed"
    return done.stdout if succeeds else done.stdout + done.stderr


def step_times(output):
    return {name: float(seconds) for name, seconds in re.findall(r"^  (\w+)\s+([\d.]+) s$", output, re.M)}


@pytest.fixture
def cluster_and_device(binary, tmp_path, nats_cluster):
    nodes = start_nodes(binary, tmp_path, nats_cluster, ["node2", "node3"], ENV)
    device = tmp_path / "device-data"
    device.mkdir()
    import_model(binary, device, MODELS / DEFAULT_MODEL, "--name", OWN_MODEL, "--link")
    key = create_key(binary, device, "device-key", "admin")
    single = start_serve(binary, device, tmp_path / "single.log", ENV)
    yield nodes, nats_cluster, device, single, key
    for served in [*nodes.values(), single]:
        if served.process.poll() is None:
            stop_serve(served)
    pid = device / "serve.pid"
    if pid.exists():
        try:
            os.kill(int(pid.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


async def test_a_single_device_moves_into_the_cluster_and_back_with_nothing_lost(cluster_and_device, binary):
    nodes, nats, device, single, key = cluster_and_device
    async with connected(single.url, key) as client:
        changed = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": 61}}})
        assert not changed.is_error, changed.content

    output = run_script(
        "migrate_single_to_cluster.sh",
        binary,
        ["--cluster", nats.urls, "--via", nodes["node3"].url, "--node", "node1", "--data-dir", str(device),
         "--serve-pid", str(single.process.pid), "--listen", "127.0.0.1:0"],
        key,
    )
    times = step_times(output)
    assert set(STEPS) <= set(times) and "total" in times, output
    print(f"migration: {times}")
    assert single.process.wait(timeout=10) == 0, "the single device's serve stopped cleanly"
    assert f"model {OWN_MODEL} answers there" in output and "cache.ttl_secs = 61 holds there" in output, output

    # Checked again here: the key, the setting and the model, all at node 3.
    async with connected(nodes["node3"].url, key) as node3:
        assert (await read_json(node3, "jetson://config/settings"))["cache"]["ttl_secs"] == 61
        result = await node3.call_tool(
            "text_generate", {"model": OWN_MODEL, "prompt": "Say hello.", "max_tokens": 4, "temperature": 0}
        )
        assert not result.is_error and result.structured_content["text"].strip(), result.content
    assert list(device.glob("backups/*.tar")), "the backup was kept"

    back = run_script(
        "migrate_cluster_to_single.sh", binary, ["--data-dir", str(device), "--listen", "127.0.0.1:0"], key
    )
    assert set(["backup", "stop", "leave", "start", "validate"]) <= set(step_times(back)), back
    assert not (device / "cluster_settings.json").exists()
    kept = (device / "settings.toml").read_text()
    assert "ttl_secs = 61" in kept and "urls" not in kept, kept
    listed = json.loads(
        subprocess.run([str(binary), "--data-dir", str(device), "models", "list", "--json"],
                       capture_output=True, text=True, check=True).stdout
    )
    assert OWN_MODEL in [model["name"] for model in listed]


async def test_a_migration_that_could_not_share_everything_stops_before_the_device_does(cluster_and_device, binary):
    nodes, nats, device, single, key = cluster_and_device
    import_model(binary, device, MODELS / DEFAULT_MODEL, "--name", "two..dots", "--link")
    output = run_script(
        "migrate_single_to_cluster.sh",
        binary,
        ["--cluster", nats.urls, "--via", nodes["node3"].url, "--data-dir", str(device),
         "--serve-pid", str(single.process.pid)],
        key,
        succeeds=False,
    )
    assert "two..dots" in output and "stopped at step 'preflight'" in output, output
    assert single.process.poll() is None, "the single device still serves"
    async with connected(single.url, key) as client:
        assert (await read_json(client, "jetson://config/settings"))["scope"]["cluster"] is False
    kept = device / "settings.toml"
    assert not kept.exists() or "cluster" not in kept.read_text(), "nothing recorded"
