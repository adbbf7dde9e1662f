"""scripts/integrate_cloud_backup.sh as an operator runs it: an edge site (one nats-server in its own
JetStream domain, no leaf link yet; two JetsonMind nodes) is connected to a cloud hub where one cloud node
serves. Afterwards the site is leafed to the hub, the hub mirrors the site's buckets and streams, and
calls beyond the site's ceiling run in the cloud. A run that fails after it changed the site's NATS
config leaves the site as it was, and one that cannot reach the hub changes nothing."""

import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager

import pytest

from conftest import ROOT, connected, read_json, start_nodes, stop_serve
from natsclient import nats_client
from natscluster import Leafing, NatsCluster, hub_cluster
from test_hybrid import SMALL_REPLICAS, call_all, last_hop, sees_the_cloud
from test_migration import step_times

pytestmark = pytest.mark.anyio

SITE = "edge1"
STEPS = ["preflight", "config", "nats", "link", "settings", "nodes", "backups", "failover"]
MIRRORS = [f"KV_{SITE}_settings", f"KV_{SITE}_keys", f"KV_{SITE}_models", f"KV_{SITE}_placements", f"KV_{SITE}_spending",
           f"{SITE}_telemetry", f"{SITE}_analytics"]


class Site:
    def __init__(self, hub, nats, nodes):
        self.hub, self.nats, self.nodes = hub, nats, nodes

    @property
    def config(self):
        return self.nats.servers[0].config

    def node_args(self):
        return [arg for node in self.nodes.values() for arg in ("--node", f"{node.url},{node.process.pid}")]


# Pids of processes the script restarted as they ran (children of its, not of pytest): stopped after.
started_by_scripts = []


def stop_pid(pid):
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


@contextmanager
def site_and_hub(binary, tmp_path, domain):
    """A hub with the cloud node `c1`, and a site (JetsonMind cluster SITE, nodes e1a and e1b) whose one
    nats-server has JetStream domain `domain` (None: no domain) and no leaf link. Whatever the script
    started (it restarts processes as they ran) is stopped after."""
    with hub_cluster(tmp_path / "hub") as hub, NatsCluster(tmp_path / "site", n=1, leaf=Leafing(domain), prefix="edge1-n") as nats:
        nodes = {}
        try:
            nodes.update(start_nodes(binary, tmp_path, hub, ["c1"], {**SMALL_REPLICAS, "JETSONMIND_CLUSTER__NAME": "cloud"}))
            nodes.update(start_nodes(binary, tmp_path, nats, ["e1a", "e1b"], {**SMALL_REPLICAS, "JETSONMIND_CLUSTER__NAME": SITE}))
            yield Site(hub, nats, {name: nodes[name] for name in ("e1a", "e1b")})
        finally:
            for node in nodes.values():
                if node.process.poll() is None:
                    stop_serve(node)
            for pid in started_by_scripts:
                stop_pid(pid)
            started_by_scripts.clear()
            stop_pid(int(nats.servers[0].pid_file.read_text()) if nats.servers[0].pid_file.exists() else None)


def integrate(binary, site, tmp_path, *args, hub_monitor=None, succeeds=True):
    """Run the script against `site` (the hub's monitoring at `hub_monitor`, by default the hub's own): its
    output, both streams. Pids it started are stopped after."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "integrate_cloud_backup.sh"), "--bin", str(binary), "--cluster", SITE,
         "--hub-monitor", hub_monitor or site.hub.servers[0].monitor_url, "--nats-config", str(site.config),
         "--work-dir", str(tmp_path / "work"), *site.node_args(), *args],
        capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=300,
    )
    output = done.stdout + done.stderr
    started_by_scripts.extend(int(pid) for pid in re.findall(r"as it ran: pid (\d+)", output))
    assert (done.returncode == 0) == succeeds, f"exited {done.returncode}:\n{output}"
    return output


def leaf_url(hub):
    return f"nats-leaf://{hub.leaf_address(0)}"


async def test_a_site_is_connected_to_the_hub_backed_up_and_overflows_to_the_cloud(binary, tmp_path):
    with site_and_hub(binary, tmp_path, domain=SITE) as site:
        output = integrate(binary, site, tmp_path, "--leaf-url", leaf_url(site.hub), "--failover-calls", "8")
        times = step_times(output)
        assert set(STEPS) <= set(times) and "total" in times, output
        print(f"integration: {times}")

        assert set(site.nats.names) <= site.hub.leaf_peers(0), "the site is leafed to the hub"
        async with nats_client(site.hub.client_address(0)) as hub:
            for name in MIRRORS:
                info = await hub.jetstream().stream_info(name)
                assert info.config.mirror.external.api == f"$JS.{SITE}.API", (name, info.config.mirror)
        assert re.search(r"served by tier \(node\): .*'cloud \(c1\)': \d", output), output

        # Checked again here: the nodes restarted with the hub, and calls beyond the site's ceiling run at c1.
        url = re.findall(r"node 0 serves at (\S+)", output)[-1]
        async with connected(url, None) as client:
            assert (await read_json(client, "jetson://config/settings"))["hybrid"]["hub_domain"] == "hub"
            assert await sees_the_cloud(client)
            hops = [last_hop(result) for result in await call_all(client, 8, "Say hello.")]
            assert any(hop["tier"] == "cloud" and hop["node"] == "c1" for hop in hops), hops


@pytest.fixture
def silent_port():
    """A port that takes connections and never says anything (not a hub)."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield listener.getsockname()[1]


async def test_a_failure_after_the_change_leaves_the_site_as_it_was(binary, tmp_path, silent_port):
    # No domain yet: the script adds one, which takes a restart of the site's nats-server, and undoes it.
    with site_and_hub(binary, tmp_path, domain=None) as site:
        before = site.config.read_bytes()
        output = integrate(binary, site, tmp_path, "--leaf-url", f"nats-leaf://127.0.0.1:{silent_port}",
                           "--domain", SITE, "--wait-s", "10", succeeds=False)
        assert "stopped at step 'link'" in output and "put back as it was" in output, output
        assert "runs the old config again" in output, output
        assert site.config.read_bytes() == before, "the config is as it was"
        site.nats.wait_for(lambda: site.nats.healthy(0), "the site's nats-server serves")
        status, varz = site.nats.monitor(0, "/varz")
        assert status == 200 and not (varz.get("jetstream") or {}).get("config", {}).get("domain"), varz
        assert not site.hub.leaf_peers(0)
        for node in site.nodes.values():
            assert node.process.poll() is None, "the nodes were not restarted"
            async with connected(node.url, None) as client:
                assert (await read_json(client, "jetson://config/settings"))["hybrid"]["hub_domain"] == ""


async def test_an_unreachable_hub_changes_nothing(binary, tmp_path, silent_port):
    with site_and_hub(binary, tmp_path, domain=SITE) as site:
        before = site.config.read_bytes()
        output = integrate(binary, site, tmp_path, "--leaf-url", leaf_url(site.hub),
                           hub_monitor=f"http://127.0.0.1:{silent_port}", succeeds=False)
        assert "stopped at step 'preflight'" in output and "does not answer" in output, output
        assert "nothing was changed" in output, output
        assert site.config.read_bytes() == before
