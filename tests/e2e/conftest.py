"""Start a real `jetsonmind serve` for the end-to-end tests and stop it after."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
import urllib.parse
import urllib.request
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from natscluster import NatsCluster, NatsHybrid, Netns, http_get, wait_until

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("JETSONMIND_BIN", ROOT / "target" / "debug" / "jetsonmind"))


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def binary():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build` (or set JETSONMIND_BIN)")
    return BINARY


MODELS = ROOT / "models"
DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def data_dir(binary, tmp_path_factory):
    """A data dir whose model store holds the default model (fetched by ./setup.sh), hard-linked in."""
    return make_data_dir(binary, tmp_path_factory.mktemp("jetsonmind-data"))


def make_data_dir(binary, path):
    """`path` as a data dir with the default model imported (hard-linked, so it costs no copy)."""
    import_model(binary, path, default_model(), "--link")
    return path


def run(command, env=None, timeout=300, check=True, cwd=None):
    """`command` (a list), its output captured as text; with `check`, a failure says what it printed."""
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def default_model():
    """The default model's file, fetched by ./setup.sh."""
    if not (MODELS / DEFAULT_MODEL).is_file():
        pytest.fail(f"{MODELS / DEFAULT_MODEL} is missing: run ./setup.sh")
    return MODELS / DEFAULT_MODEL


def import_model(binary, data_dir, source, *args):
    """`jetsonmind models import SOURCE ARGS` into the store of `data_dir`."""
    imported = subprocess.run(
        [str(binary), "--data-dir", str(data_dir), "models", "import", str(source), *args],
        capture_output=True,
        text=True,
    )
    if imported.returncode != 0:
        pytest.fail(f"cannot import {source}: {imported.stderr}")


class Served:
    def __init__(self, url, process, log):
        self.url = url
        self.process = process
        self.log = log


def start_serve(binary, data_dir, log, env=None, args=(), wrap=None):
    """`jetsonmind serve` on a free loopback port; its URL is read from its log. `args` are more flags."""
    serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *args]
    return start_jetsonmind(binary, serve, log, env, wrap)


def start_jetsonmind(binary, args, log, env=None, wrap=None):
    """A `jetsonmind` server process listening on a port it picked; its URL is read from its log.
    `wrap` turns the command line into the one to run (e.g. Netns.command: inside a namespace)."""
    command = [str(binary), *args]
    process, url = start_announcing(
        wrap(command) if wrap else command, log, r"listening on (http://\S+/mcp)", f"jetsonmind {args[0]}", env
    )
    return Served(url, process, log)


def start_announcing(command, log, announcement, name, env=None):
    """Runs `command`, its output into `log`, until a line of its log matches the regex `announcement`
    (e.g. the URL it listens on, which its group 1 picks out): (process, group 1). Fails with the log
    when it exits first or does not announce within 30 s."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env={**os.environ, **(env or {})}
        )
    deadline = time.monotonic() + 30
    announced = None
    while announced is None and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited early:\n{log.read_text(errors='replace')}")
        found = re.search(announcement, log.read_text(errors="replace"))
        announced = found.group(1) if found else None
        time.sleep(0.05)
    if announced is None:
        process.kill()
        pytest.fail(f"{name} did not start:\n{log.read_text(errors='replace')}")
    return process, announced


def stop_serve(served):
    if not stop_process(served.process):
        pytest.fail("jetsonmind serve did not stop on SIGTERM")


def stop_process(process, grace=10):
    """SIGTERM, then SIGKILL if it still runs after `grace` seconds: whether SIGTERM alone stopped it."""
    process.terminate()
    try:
        process.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


def start_cluster_node(binary, tmp_path, nats_urls, node, env=None, netns=None, host=None):
    """`jetsonmind serve --cluster <nats_urls> --node <node>` with a data dir of its own under tmp_path
    (default model imported; kept when the node is started again), each start logging to a new
    tmp_path/<node>[.N].log. With `netns`, it runs inside host `host` and its URL is a loopback port
    here forwarded to it."""
    # Several nodes share this machine's cores, where each would have a device of its own: one decode
    # thread each. With every core each, llama.cpp's threads spin at each barrier for a partner that
    # another node's thread holds off the CPU, and a 16-token answer took 21 s instead of 1.
    env = {"JETSONMIND_COMPUTE__THREADS": "1", **(env or {})}
    data = cluster_node_data(binary, tmp_path, node)
    starts = len(list(tmp_path.glob(f"{node}.*log")))
    log = tmp_path / (f"{node}.{starts}.log" if starts else f"{node}.log")
    cluster_args = ["--cluster", nats_urls, "--node", node]
    if netns is None:
        return start_serve(binary, data, log, env, cluster_args)
    served = start_serve(binary, data, log, env, cluster_args, lambda argv: netns.command(host, argv))
    inside = urllib.parse.urlsplit(served.url)
    served.url = inside._replace(netloc=f"127.0.0.1:{netns.forward(host, inside.port, inside.hostname)}").geturl()
    return served


def cluster_node_data(binary, tmp_path, node):
    """The data dir `start_cluster_node` gives `node`: made with the default model the first time."""
    data = tmp_path / f"{node}-data"
    if not data.exists():
        data.mkdir(parents=True)
        make_data_dir(binary, data)
    return data


def start_nodes(binary, tmp_path, nats, names, env=None, **where):
    """Cluster nodes `names`, all at once, as devices boot (they race to create the cluster's buckets
    on a fresh cluster): {name: Served}."""
    with ThreadPoolExecutor(len(names)) as pool:
        starting = {name: pool.submit(start_cluster_node, binary, tmp_path, nats.urls, name, env, **where) for name in names}
    started = {name: future.result() for name, future in starting.items() if future.exception() is None}
    failed = [future.exception() for future in starting.values() if future.exception() is not None]
    if failed:
        for served in started.values():  # no node outlives a start that failed
            stop_serve(served)
        raise failed[0]
    return started


@contextmanager
def running_nodes(binary, tmp_path, nats, names, env=None):
    """`start_nodes`, each node stopped afterwards unless a test killed it."""
    nodes = start_nodes(binary, tmp_path, nats, names, env)
    try:
        yield nodes
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                stop_serve(node)


# A bound against hanging, not a speed check: what "within seconds" means on a loaded 2-core machine.
SETTLE_SECS = 30


async def eventually(what, attempt, timeout=SETTLE_SECS):
    """Retry `attempt()` until it returns something true; that value."""
    with anyio.fail_after(timeout):
        while True:
            value = await attempt()
            if value:
                return value
            await anyio.sleep(0.2)


async def read_json(client, uri):
    """A JSON resource as it is now (never the client's cached copy)."""
    read = await client.read_resource(uri, cache_mode="bypass")
    return json.loads(read.contents[0].text)


def node_of(result):
    """The node that ran a call: the hop nearest the client names it."""
    return result.meta["jetsonmind/route"][-1]["node"]


class Statuses:
    """HTTP error statuses and challenges the client met (the SDK hides them)."""

    def __init__(self):
        self.seen = []

    async def hook(self, response):
        if response.status_code >= 400:
            self.seen.append((response.status_code, response.headers.get("www-authenticate", "")))


def client_with(url, token, statuses, mode="auto"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, event_hooks={"response": [statuses.hook]}, timeout=60)
    return http, Client(streamable_http_client(url, http_client=http), mode=mode)


class SessionRefused(Exception):
    """A session that did not open, with the HTTP statuses the server answered (the SDK hides them)."""

    def __init__(self, url, seen):
        super().__init__(f"{url}: no session; HTTP statuses seen: {seen}")
        self.seen = seen


@asynccontextmanager
async def connected(url, key):
    """An MCP session at `url` with `key` as its bearer token."""
    statuses = Statuses()
    http, client = client_with(url, key, statuses)
    opened = False
    try:
        async with http, client:
            opened = True
            yield client
    except Exception as error:
        if opened:
            raise
        raise SessionRefused(url, statuses.seen) from error


@pytest.fixture
def nats_cluster(tmp_path):
    """Three nats-servers as one JetStream cluster on loopback, ready; all stopped after the test."""
    with NatsCluster(tmp_path / "nats", n=3) as cluster:
        yield cluster


@pytest.fixture
def netns():
    """Three hosts (network namespaces) on a private switch; all torn down after the test."""
    with Netns(count=3) as hosts:
        yield hosts


@pytest.fixture
def nats_cluster_netns(netns, tmp_path):
    """Three nats-servers, server i inside host i of `netns`, clustered over its switch; ready."""
    with NatsCluster(tmp_path / "nats", n=3, netns=netns) as cluster:
        yield cluster


@pytest.fixture
def nats_hybrid(tmp_path):
    """A hub nats-server (JetStream domain "hub") and two one-server sites (domains "site1", "site2")
    leafed to it through uplinks the test can cut; linked; all stopped after the test."""
    with NatsHybrid(tmp_path / "hybrid", sites=2) as hybrid:
        yield hybrid


# llama.cpp's own server, from the PyPI wheel xllamacpp (llama_server.py says why and how).
LLAMA_SERVER = [sys.executable, str(ROOT / "tests" / "e2e" / "llama_server.py")]


class LlamaServer:
    """A running llama-server: `base_url` is its OpenAI API root (…/v1), `url` the server's root
    (/health, /slots, /metrics; the last two need its API key when it has one)."""

    def __init__(self, url, process, log):
        self.url = url
        self.base_url = f"{url}/v1"
        self.process = process
        self.log = log

    def metric(self, name):
        """A counter of its /metrics (`llamacpp:<name>`), all requests together, counted when a slot is
        released."""
        status, metrics = http_get(f"{self.url}/metrics")
        assert status == 200, metrics
        return int(float(re.search(rf"^llamacpp:{name} (\S+)$", metrics, re.M).group(1)))

    def tokens_predicted(self):
        """Tokens it generated so far."""
        return self.metric("tokens_predicted_total")

    def slots_idle(self):
        status, slots = http_get(f"{self.url}/slots")
        return status == 200 and not any(slot["is_processing"] for slot in slots)


@pytest.fixture
def llama_server(request, tmp_path):
    """llama.cpp's `llama-server`, a real OpenAI-compatible server we did not write, serving the default
    model on a loopback port it picked, with 2 parallel slots and Prometheus metrics; healthy. Stopped
    after the test. Parametrized indirectly with {"api_key": KEY}, it requires that key (`--api-key`)."""
    log = tmp_path / "llama-server.log"
    command = [*LLAMA_SERVER, "--host", "127.0.0.1", "--port", "0", "--model", str(default_model())]
    command += ["--parallel", "2", "--ctx-size", "2048", "--metrics"]
    api_key = getattr(request, "param", {}).get("api_key")
    if api_key:
        command += ["--api-key", api_key]
    # It says where it listens once the model is loaded.
    process, url = start_announcing(command, log, r"listening on (http://\S+)", "llama-server")
    server = LlamaServer(url, process, log)
    try:
        wait_until(lambda: http_get(f"{url}/health")[0] == 200, "llama-server healthy", context=log.read_text)
        yield server
    finally:
        if not stop_process(process):
            pytest.fail(f"llama-server did not stop on SIGTERM:\n{log.read_text(errors='replace')}")


# Most tests repeat the same deterministic call over several transports and
# eras; each must reach the model, not the inference cache (tested on its own).
NO_CACHE = {"JETSONMIND_CACHE__ENABLED": "false"}


@pytest.fixture(scope="session")
def served(binary, data_dir, tmp_path_factory):
    served = start_serve(binary, data_dir, tmp_path_factory.mktemp("logs") / "serve.log", NO_CACHE)
    yield served
    stop_serve(served)


@pytest.fixture(params=["http", "stdio"])
def transport(request, served, binary, data_dir):
    """The gateway of `jetsonmind serve`, over Streamable HTTP or stdio."""
    if request.param == "http":
        return served.url
    return StdioServerParameters(
        command=str(binary), args=["serve", "--stdio", "--data-dir", str(data_dir)], env={**os.environ, **NO_CACHE}
    )


@pytest.fixture(params=["legacy", "auto"])
def mode(request):
    """The handshake era, or the 2026-07-28 era that `auto` negotiates with this server."""
    return request.param


def create_key(binary, data_dir, name, *scopes):
    """`jetsonmind keys create`: the key, printed once."""
    args = [str(binary), "--data-dir", str(data_dir), "keys", "create", "--name", name]
    for scope in scopes:
        args += ["--scope", scope]
    made = subprocess.run(args, capture_output=True, text=True, check=True)
    return made.stdout.strip()


def raw_post(url, token, message, headers=None, timeout=30):
    """One JSON-RPC message POSTed as a handshake-era client would: (status, headers, body)."""
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    sent["MCP-Protocol-Version"] = "2025-11-25"
    sent.update(headers or {})
    request = urllib.request.Request(url, data=json.dumps(message).encode(), headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def call(name, arguments):
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def cancel_once_started(call, started, what):
    """Run `call()` and cancel it as soon as `started` (an anyio.Event its progress sets) is set, within 60 s; a
    call that returns first fails the test (`what` finished before it was cancelled)."""
    import anyio

    async with anyio.create_task_group() as group:

        async def run():
            await call()
            pytest.fail(f"{what} finished before it was cancelled")

        group.start_soon(run)
        with anyio.fail_after(60):
            await started.wait()
        group.cancel_scope.cancel()
