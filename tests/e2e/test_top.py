"""`jetsonmind top` in a real terminal: tmux runs it against a real `jetsonmind serve` (send-keys,
capture-pane). It shows this machine's memory as /proc/meminfo has it, the compute replica with the
model a call loaded and that model's generation rate; its keys sort the replicas and unload the model
through the gateway (monitor_health then shows none loaded); q gives the terminal back."""

import re
import subprocess
import uuid

import pytest

from conftest import DEFAULT_MODEL, connected, eventually, start_serve, stop_serve

pytestmark = pytest.mark.anyio

GIB = 1 << 30


class Tmux:
    """A detached tmux session of its own running `command` in a 160x40 terminal."""

    def __init__(self, command):
        self.name = f"top-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "40", *command], check=True)

    def screen(self):
        shown = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return shown.stdout

    def keys(self, *keys):
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def alive(self):
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


async def tool(url, name, arguments):
    async with connected(url, None) as client:
        return await client.call_tool(name, arguments)


def meminfo():
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", open("/proc/meminfo").read(), re.M))
    return int(fields["MemTotal"]) * 1024, (int(fields["MemTotal"]) - int(fields["MemAvailable"])) * 1024


async def test_top_shows_the_figures_and_its_keys_act_through_the_gateway(binary, data_dir, tmp_path):
    served = start_serve(binary, data_dir, tmp_path / "serve.log")
    top = None
    try:
        answer = await tool(served.url, "text_generate", {"prompt": "Say hello.", "max_tokens": 8})
        assert not answer.is_error, answer.content
        top = Tmux([str(binary), "top", "--url", served.url, "--interval-ms", "300"])

        async def showing(*words):
            screen = top.screen()
            return all(word in screen for word in words) and screen

        screen = await eventually("top showing the replica and its model", lambda: showing("compute-local", DEFAULT_MODEL))
        used, total = (float(x) for x in re.search(r"mem ([\d.]+)/([\d.]+) GiB", screen).groups())
        real_total, real_used = meminfo()
        assert abs(total * GIB - real_total) <= 0.05 * real_total, (screen, real_total)
        assert abs(used * GIB - real_used) <= 0.05 * real_total, (screen, real_used)
        assert re.search(r"cpu [\d.]+% of \d+ cores", screen), screen
        assert re.search(rf"{re.escape(DEFAULT_MODEL)}\s+[\d.]+ tok/s\s+1\b", screen), "rate and calls of the model"

        top.keys("s")
        await eventually("sorted by calls in flight", lambda: showing("sort: in flight"))
        top.keys("u")
        await eventually("the unload said", lambda: showing("unloaded") or showing("Unloaded"))

        async def nothing_loaded():
            health = await tool(served.url, "monitor_health", {})
            return not health.structured_content["replicas"][0]["report"]["loaded"]

        await eventually("the model unloaded at the replica", nothing_loaded)
        top.keys("q")

        async def gone():
            return not top.alive()

        await eventually("top quitting", gone)
    finally:
        if top is not None:
            top.close()
        stop_serve(served)
