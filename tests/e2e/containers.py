"""Container engines for the deployment tests, started here and stopped after: Debian's dockerd (its own
data root and socket, no iptables, stopped by its PID) and podman; and a compose project on either
(docker-compose against that dockerd, or podman-compose).

podman reads packaging/container/containers.conf (CONTAINERS_CONF), as scripts/image.sh does: this
VM's limits and cgroup layout need it."""

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import DEFAULT_MODEL, SessionRefused, connected, default_model, eventually, run
from natscluster import NATS_SERVER, _die_with_parent, http_get, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "packaging" / "container" / "containers.conf"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
COMPOSE_DIR = ROOT / "deploy" / "compose"


@contextmanager
def dockerd(workdir):
    """Debian's dockerd, its state under `workdir`: the environment for the docker CLI to reach it."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Its sockets: a unix socket's path has room for 104 bytes, less than pytest's directories take.
    sockets = Path(tempfile.mkdtemp(prefix="jm-dockerd-", dir="/tmp"))
    socket = sockets / "docker.sock"
    log = open(workdir / "dockerd.log", "w")
    command = ["dockerd", "--iptables=false", "--bridge=none", "--data-root", str(workdir / "data"),
               "--exec-root", str(sockets / "exec"), "--pidfile", str(workdir / "dockerd.pid"),
               "-H", f"unix://{socket}"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
    try:
        ready = lambda: run(["docker", "version"], env=env, check=False).returncode == 0
        wait_until(ready, "dockerd answering", context=lambda: (workdir / "dockerd.log").read_text())
        yield env
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        # Its data root is mounted on itself while it runs; a dockerd that failed to start leaves it so.
        subprocess.run(["umount", "--lazy", str(workdir / "data")], capture_output=True, check=False)
        shutil.rmtree(workdir / "data", ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


class Compose:
    """One compose project: `file` in `directory`, run by `engine` ("docker", against a `dockerd`'s
    `env`, or "podman")."""

    def __init__(self, engine, directory, file, project, env):
        self.engine = engine
        self.directory = directory
        self.project = project
        self.env = env
        tool = "docker-compose" if engine == "docker" else "podman-compose"
        self.command = [tool, "-f", file, "-p", project]

    def __call__(self, *args, timeout=300, check=True):
        return run([*self.command, *args], env=self.env, timeout=timeout, check=check, cwd=self.directory)

    def container(self, service):
        """The container's name, as both tools name it."""
        return f"{self.project}_{service}_1"

    def cli(self, *args, check=True, timeout=300):
        """The engine's own CLI (docker or podman)."""
        return run([self.engine, *args], env=self.env, check=check, timeout=timeout)

    def down(self):
        """Everything the project made, its volumes too."""
        self("down", "-v", "-t", "10", check=False)
        if self.engine == "podman":  # podman-compose 1.0.3 leaves named volumes behind
            names = self.cli("volume", "ls", "-q", check=False).stdout.split()
            for name in (n for n in names if n.startswith(f"{self.project}_")):
                self.cli("volume", "rm", "-f", name, check=False)

    def completed(self, service, timeout=180):
        """Wait for the one-shot `service` to finish; its exit code."""
        return int(self.cli("wait", self.container(service), timeout=timeout).stdout.split()[-1])

    def logs(self):
        return self("logs", check=False).stdout[-20000:]


def build_images(binary, archive):
    """scripts/image.sh: JetsonMind's image from `binary`, and the NATS image from .venv's nats-server,
    both saved to `archive` for `docker load`; JetsonMind's image's name."""
    build = [str(ROOT / "scripts/image.sh"), str(binary), "--nats-server", str(NATS_SERVER), "--save", str(archive)]
    return run(build, env=PODMAN_ENV, timeout=900).stdout.split()[-1]


def new_project(directory):
    """deploy/compose copied to `directory`, with a fresh .env (new-env.sh) and the default model in its
    models directory: the keys of its .env."""
    shutil.copytree(COMPOSE_DIR, directory, ignore=shutil.ignore_patterns(".env", "models"))
    (directory / "models").mkdir()
    os.link(default_model(), directory / "models" / DEFAULT_MODEL)
    run([str(directory / "new-env.sh")])
    return dict(line.split("=", 1) for line in (directory / ".env").read_text().split())


@contextmanager
def engine(kind, archive, workdir):
    """The environment compose needs: podman's, or a dockerd of its own with the images loaded."""
    if kind == "podman":
        yield PODMAN_ENV
        return
    with dockerd(workdir / "dockerd") as env:
        run(["docker", "load", "-q", "-i", str(archive)], env=env)
        yield env


@contextmanager
def stack(kind, image, directory, workdir, file, ports, env=None):
    """The compose project `file` of `directory` up on `kind` ("docker" or "podman") with `image` (its
    name, the archive), its gateways published on `ports` (JETSONMIND_PORT, or JETSONMIND_PORT_1.. for
    more): (Compose, the time of `up`); down, volumes too, after."""
    names = ["JETSONMIND_PORT"] if len(ports) == 1 else [f"JETSONMIND_PORT_{i + 1}" for i in range(len(ports))]
    settings = {**dict(zip(names, map(str, ports))), "JETSONMIND_IMAGE": image[0], **(env or {})}
    with engine(kind, image[1], workdir) as engine_env:
        compose = Compose(kind, directory, file, f"jm{ports[0]}", {**engine_env, **settings})
        began = time.monotonic()
        try:
            compose("up", "-d")
            yield compose, began
        except BaseException:
            print(compose.logs())
            raise
        finally:
            compose.down()


def ready(base):
    return http_get(f"{base}/readyz")[0] == 200


async def first_answer(base, key):
    """Once the gateway at `base` is ready: a text_generate through it, with `key`."""

    async def gateway_ready():
        return ready(base)

    await eventually("the gateway ready", gateway_ready, timeout=180)
    async with connected(f"{base}/mcp", key) as client:
        return await client.call_tool("text_generate", {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0})


def health_of(state):
    """{replica: healthy?} of a monitor_health answer."""
    return {r["name"]: r["up"] for r in state["replicas"]}


async def health_at(url, key):
    async with connected(url, key) as client:
        result = await client.call_tool("monitor_health", {})
    assert not result.is_error, result.content
    return result.structured_content


async def every_answer(url, key):
    """aggregate_responses asking every replica the node's gateway routes to: {replica: ok?}."""
    arguments = {"prompt": "Say hi.", "max_tokens": 4}
    async with connected(url, key) as client:
        result = await client.call_tool(
            "aggregate_responses", {"tool": "text_generate", "arguments": arguments, "strategy": "all"}
        )
    assert not result.is_error, result.content
    return {a["replica"]: a["ok"] for a in result.structured_content["answers"]}


async def answers_from_every_node(compose, url, key, nodes):
    """Once the `keys` service has added `key` to the cluster and the gateway at `url` routes to `nodes`
    nodes: every_answer there. podman-compose starts the nodes without waiting for `keys`, so a node can be
    ready before the key exists; once it does, each node's mirror of the cluster's keys takes it a moment
    later: until then the node answers 401, which counts as not yet."""
    assert compose.completed("keys") == 0, compose.logs()

    async def all_up():
        if not ready(url.removesuffix("/mcp")):
            return False
        try:
            health = health_of(await health_at(url, key))
        except SessionRefused as refused:
            if {status for status, _ in refused.seen} == {401}:
                return False
            raise
        return sum(health.values()) == nodes

    await eventually(f"{url} routing to all {nodes} nodes", all_up, timeout=180)
    return await every_answer(url, key)
