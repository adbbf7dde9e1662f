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
from natscluster import free_ports, http_get

pytestmark = pytest.mark.anyio

COMPOSE_DIR = ROOT / "deploy" / "compose"


@pytest.fixture(scope="module")
def image(binary, tmp_path_factory):
    """The image, built by scripts/image.sh from the binary under test, and saved for `docker load`."""
    if os.geteuid() != 0:
        pytest.fail("the container tests run dockerd and podman's root storage: run them as root")
    archive = tmp_path_factory.mktemp("image") / "jetsonmind.tar"
    made = run([str(ROOT / "scripts/image.sh"), str(binary), "--save", str(archive)], env=PODMAN_ENV, timeout=900)
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


@pytest.fixture(params=["docker", "podman"])
def stack(request, image, project, tmp_path):
    """The compose project up on the engine the test is parametrized with; down (volumes too) after."""
    directory, keys = project
    port = free_ports(1)[0]
    env_for = {"JETSONMIND_PORT": str(port), "JETSONMIND_IMAGE": image[0]}
    with engine(request.param, image[1], tmp_path) as env:
        compose = Compose(request.param, directory, f"jm{port}", {**env, **env_for})
        began = time.monotonic()
        try:
            compose("up", "-d")
            yield compose, f"http://127.0.0.1:{port}", keys, began
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


async def test_compose_answers_through_the_gateway_and_goes_on_without_a_service(stack):
    compose, base, keys, began = stack
    url, key = f"{base}/mcp", keys["JETSONMIND_CLIENT_KEY"]

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
