"""Container deployment: the image scripts/image.sh builds from Debian packages (mmdebstrap, podman
import; no registry), and deploy/compose/compose.yaml (compute, data, control and the gateway as four
services on a private network) brought up on Debian's dockerd with docker-compose and on podman with
podman-compose. The official Python MCP SDK calls tools through the published gateway; one service is
stopped and the rest go on; the project is torn down, volumes and all. Prints `up` to first answer.
Needs root (dockerd; podman's own storage)."""

import os
import shutil
import time
from contextlib import contextmanager

import pytest

from conftest import DEFAULT_MODEL, ROOT, connected, default_model, eventually, read_json, raw_post
from containers import PODMAN_ENV, Compose, dockerd, run
from natscluster import NATS_SERVER, free_ports, http_get

pytestmark = pytest.mark.anyio

COMPOSE_DIR = ROOT / "deploy" / "compose"


@pytest.fixture(scope="module")
def image(binary, tmp_path_factory):
    """The images, built by scripts/image.sh from the binary under test (and the nats-server of .venv,
    for the cluster), and saved for `docker load`: (JetsonMind's image, the archive)."""
    if os.geteuid() != 0:
        pytest.fail("the container tests run dockerd and podman's root storage: run them as root")
    archive = tmp_path_factory.mktemp("image") / "images.tar"
    build = [str(ROOT / "scripts/image.sh"), str(binary), "--nats-server", str(NATS_SERVER), "--save", str(archive)]
    made = run(build, env=PODMAN_ENV, timeout=900)
    return made.stdout.split()[-1], archive


def test_the_image_is_debian_runs_unprivileged_and_has_no_compiler(image):
    name, _ = image
    config = run(["podman", "image", "inspect", "--format", "{{.Config.User}} {{.Config.Volumes}}", name],
                 env=PODMAN_ENV).stdout
    assert config.startswith("10001:10001 ") and "/var/lib/jetsonmind" in config, config
    inside = "grep -q '^ID=debian' /etc/os-release && id -u && ! command -v cc gcc rustc cargo"
    shown = run(["podman", "run", "--rm", "--entrypoint", "/bin/sh", name, "-c", inside], env=PODMAN_ENV)
    assert shown.stdout.strip() == "10001", shown
    version = run(["podman", "run", "--rm", name, "--version"], env=PODMAN_ENV).stdout
    assert version.startswith("jetsonmind "), version


@pytest.fixture
def project(tmp_path):
    """A copy of deploy/compose with a fresh .env (deploy/compose/new-env.sh) and the default model in
    its models directory."""
    directory = tmp_path / "compose"
    shutil.copytree(COMPOSE_DIR, directory, ignore=shutil.ignore_patterns(".env", "models"))
    (directory / "models").mkdir()
    os.link(default_model(), directory / "models" / DEFAULT_MODEL)
    run([str(directory / "new-env.sh")])
    keys = dict(line.split("=", 1) for line in (directory / ".env").read_text().split())
    return directory, keys


@contextmanager
def stack(kind, image, project, tmp_path, file, ports, env=None):
    """The compose project `file` up on `kind` ("docker" or "podman"), its gateways published on
    `ports` (JETSONMIND_PORT, or JETSONMIND_PORT_1.. for more): (Compose, time of `up`); down, volumes
    too, after."""
    directory, _ = project
    names = ["JETSONMIND_PORT"] if len(ports) == 1 else [f"JETSONMIND_PORT_{i + 1}" for i in range(len(ports))]
    settings = {**dict(zip(names, map(str, ports))), "JETSONMIND_IMAGE": image[0], **(env or {})}
    with engine(kind, image[1], tmp_path) as engine_env:
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


@contextmanager
def engine(kind, archive, tmp_path):
    """The environment compose needs: podman's, or a dockerd of the test's own with the image loaded."""
    if kind == "podman":
        yield PODMAN_ENV
        return
    with dockerd(tmp_path / "dockerd") as env:
        run(["docker", "load", "-q", "-i", str(archive)], env=env)
        yield env


def ready(base):
    return http_get(f"{base}/readyz")[0] == 200


async def tools_of(url, key):
    async with connected(url, key) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.parametrize("kind", ["docker", "podman"])
async def test_compose_answers_through_the_gateway_and_goes_on_without_a_service(kind, image, project, tmp_path):
    port = free_ports(1)[0]
    base, key = f"http://127.0.0.1:{port}", project[1]["JETSONMIND_CLIENT_KEY"]
    url = f"{base}/mcp"
    with stack(kind, image, project, tmp_path, "compose.yaml", [port]) as (compose, began):
        await single_device(compose, began, base, url, key)


async def single_device(compose, began, base, url, key):
    async def gateway_ready():
        return ready(base)

    await eventually("the gateway ready", gateway_ready, timeout=180)
    async with connected(url, key) as client:
        answer = await client.call_tool("text_generate", {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0})
        answered = time.monotonic()
        assert not answer.is_error and answer.content[0].text.strip(), answer
        metrics = await read_json(client, "jetson://system/metrics")
        assert metrics["memory"]["total_bytes"] > 0, metrics
        # The control server reaches compute with the gateway's key (control.replicas_token_env).
        health = await client.call_tool("monitor_health", {})
        assert not health.is_error and health.structured_content["healthy"] == 1, health.content
    print(f"\n{compose.engine}: compose up to first answer {answered - began:.1f} s")
    status, _, _ = raw_post(url, None, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 401, "the gateway is published beyond its own container: keys are required"

    compose("stop", "control")

    async def control_gone():
        return "monitor_health" not in await tools_of(url, key)

    await eventually("the gateway dropping control's tools", control_gone)
    assert not ready(base), "/readyz says a backend is down"
    async with connected(url, key) as client:
        answer = await client.call_tool("text_generate", {"prompt": "Name a colour.", "max_tokens": 8})
        assert not answer.is_error and answer.content[0].text.strip(), answer
        assert (await read_json(client, "jetson://models/available"))["models"], "data still answers"

    compose("start", "control")

    async def control_back():
        if "monitor_health" not in await tools_of(url, key):
            return False
        async with connected(url, key) as client:
            health = await client.call_tool("monitor_health", {})
        return not health.is_error and health.structured_content["healthy"] == 1

    await eventually("control back behind the gateway", control_back, timeout=60)


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


async def test_cluster_compose_serves_from_every_node_and_goes_on_without_a_node_and_a_nats_server(
    image, project, tmp_path
):
    """deploy/compose/cluster.yaml on dockerd (podman-compose 1.0.3 ignores `depends_on` conditions,
    which this file needs: its key is added once NATS is up, its nodes start after): three NATS servers,
    three nodes."""
    ports = free_ports(3)
    key = project[1]["JETSONMIND_CLIENT_KEY"]
    node1, node3 = (f"http://127.0.0.1:{ports[i]}/mcp" for i in (0, 2))
    # Three nodes on this machine's two cores: one decode thread each.
    with stack("docker", image, project, tmp_path, "cluster.yaml", ports, {"JETSONMIND_THREADS": "1"}) as (
        compose,
        began,
    ):

        async def all_three():
            return ready(node1[: -len("/mcp")]) and sum(health_of(await health_at(node1, key)).values()) == 3

        await eventually("node1 routing to all three nodes", all_three, timeout=180)
        answers = await every_answer(node1, key)
        answered = time.monotonic()
        assert answers == {"compute-local": True, "compute@node2": True, "compute@node3": True}, answers
        print(f"\ncluster compose up to answers from every node (others included) {answered - began:.1f} s")

        compose("stop", "node2", "nats3")

        async def without_node2():
            health = health_of(await health_at(node1, key))
            return "compute@node2" not in health and health.get("compute@node3") and health

        await eventually("node1 without node2, with node3", without_node2, timeout=60)

        # A call to node3 fails while node3 moves to another NATS server, if it was the stopped one's.
        async def node1_and_node3_answer():
            return await every_answer(node1, key) == {"compute-local": True, "compute@node3": True}

        await eventually("answers from node1 and node3", node1_and_node3_answer, timeout=60)
        async with connected(node1, key) as client:
            for prompt in ("Say hi.", "Name a colour.", "Count to three."):
                answer = await client.call_tool("text_generate", {"prompt": prompt, "max_tokens": 4})
                assert not answer.is_error, answer.content

        # node3 may have been a client of the stopped NATS server: it reconnects and finds node1 again.
        async def node3_sees_node1():
            return health_of(await health_at(node3, key)).get("compute@node1")

        await eventually("node3 routing to node1 again", node3_sees_node1, timeout=60)
