"""Container deployment: the image scripts/image.sh builds from Debian packages (mmdebstrap, podman
import; no registry), and deploy/compose/compose.yaml (compute, data, control and the gateway as four
services on a private network) brought up on Debian's dockerd with docker-compose and on podman with
podman-compose. The official Python MCP SDK calls tools through the published gateway; one service is
stopped and the rest go on; the project is torn down, volumes and all. Prints `up` to first answer.
Needs root (dockerd; podman's own storage)."""

import os
import time

import pytest

from conftest import connected, eventually, raw_post, read_json, run
from containers import (
    PODMAN_ENV,
    answers_from_every_node,
    build_images,
    every_answer,
    first_answer,
    health_at,
    health_of,
    new_project,
    ready,
    stack,
)
from natscluster import free_ports

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def image(binary, tmp_path_factory):
    """The images, built from the binary under test (and the nats-server of .venv, for the cluster) and
    saved for `docker load`: (JetsonMind's image, the archive)."""
    if os.geteuid() != 0:
        pytest.fail("the container tests run dockerd and podman's root storage: run them as root")
    archive = tmp_path_factory.mktemp("image") / "images.tar"
    return build_images(binary, archive), archive


def test_the_image_is_debian_runs_unprivileged_and_has_no_compiler(image):
    name, _ = image
    config = run(["podman", "image", "inspect", "--format", "{{.Config.User}} {{.Config.Volumes}}", name],
                 env=PODMAN_ENV).stdout
    assert config.startswith("10001:10001 ") and "/var/lib/jetsonmind" in config, config
    # ONNX Runtime's library is where the binary looks for it (../lib/jetsonmind), for the image models.
    inside = ("grep -q '^ID=debian' /etc/os-release && id -u && ! command -v cc gcc rustc cargo"
              " && test -s /usr/local/lib/jetsonmind/libonnxruntime.so")
    shown = run(["podman", "run", "--rm", "--entrypoint", "/bin/sh", name, "-c", inside], env=PODMAN_ENV)
    assert shown.stdout.strip() == "10001", shown
    version = run(["podman", "run", "--rm", name, "--version"], env=PODMAN_ENV).stdout
    assert version.startswith("jetsonmind "), version


@pytest.fixture
def project(tmp_path):
    """deploy/compose, ready to go up: (its copy, the keys of its .env)."""
    directory = tmp_path / "compose"
    return directory, new_project(directory)


async def tools_of(url, key):
    async with connected(url, key) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


async def control_sees_compute(url, key):
    """Whether control's tools are behind the gateway and its monitor_health counts compute healthy."""
    if "monitor_health" not in await tools_of(url, key):
        return False
    async with connected(url, key) as client:
        health = await client.call_tool("monitor_health", {})
    return not health.is_error and health.structured_content["healthy"] == 1


@pytest.mark.parametrize("kind", ["docker", "podman"])
async def test_compose_answers_through_the_gateway_and_goes_on_without_a_service(kind, image, project, tmp_path):
    port = free_ports(1)[0]
    base, key = f"http://127.0.0.1:{port}", project[1]["JETSONMIND_CLIENT_KEY"]
    url = f"{base}/mcp"
    with stack(kind, image, project[0], tmp_path, "compose.yaml", [port]) as (compose, began):
        await single_device(compose, began, base, url, key)


async def single_device(compose, began, base, url, key):
    answer = await first_answer(base, key)
    answered = time.monotonic()
    assert not answer.is_error and answer.content[0].text.strip(), answer
    async with connected(url, key) as client:
        metrics = await read_json(client, "jetson://system/metrics")
        assert metrics["memory"]["total_bytes"] > 0, metrics
    # The control server reaches compute with the gateway's key (control.replicas_token_env), once
    # its health checks have seen compute up (compose starts them together; compute loads a model).
    await eventually("control seeing compute healthy", lambda: control_sees_compute(url, key), timeout=60)
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

    await eventually("control back behind the gateway", lambda: control_sees_compute(url, key), timeout=60)


@pytest.mark.parametrize("kind", ["docker", "podman"])
async def test_cluster_compose_serves_from_every_node_and_goes_on_without_a_node_and_a_nats_server(
    kind, image, project, tmp_path
):
    """deploy/compose/cluster.yaml: three NATS servers, three nodes. podman-compose 1.0.3 ignores its
    `depends_on` conditions but starts the services in their order, NATS first: the key is added while
    JetStream forms (the CLI waits for its buckets) and the nodes join as it comes up."""
    ports = free_ports(3)
    key = project[1]["JETSONMIND_CLIENT_KEY"]
    node1, node3 = (f"http://127.0.0.1:{ports[i]}/mcp" for i in (0, 2))
    # Three nodes on this machine's two cores: one decode thread each.
    with stack(kind, image, project[0], tmp_path, "cluster.yaml", ports, {"JETSONMIND_THREADS": "1"}) as (
        compose,
        began,
    ):
        answers = await answers_from_every_node(compose, node1, key, 3)
        answered = time.monotonic()
        assert answers == {"compute-local": True, "compute@node2": True, "compute@node3": True}, answers
        print(f"\n{kind}: cluster compose up to answers from every node {answered - began:.1f} s")

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
