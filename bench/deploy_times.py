#!/usr/bin/env python3
"""The deploy-time KPIs, measured: how long from the deploy command to the first answer, against the
goals (under 1 minute for one device, under 3 minutes for a cluster, on this 2-core machine once the
image exists).

  .venv/bin/python bench/deploy_times.py [--json results.json]

  package         apt installs the .deb on a clean Debian (mmdebstrap, chroot), first-run fetches the
                  default model from PyPI and imports it, serve answers text_generate
  compose         `docker-compose up -d` of deploy/compose/compose.yaml on a dockerd of its own, to the
                  first text_generate answered through the gateway
  cluster         `docker-compose up -d` of deploy/compose/cluster.yaml (three NATS servers, three
                  nodes), to answers from every node through node1's gateway (the other two's included)

The image is built first (scripts/image.sh; its time is shown, not a KPI). Times are wall clock; each
ratio is the time over its goal (below 1 meets it). The steps are those of tests/e2e/test_package.py
and test_containers.py, through the same helpers. Needs root (dockerd, chroot), ./setup.sh and
`cargo build --release`. Everything runs in a temporary directory and is stopped at the end.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BINARY, require_binary, use_e2e_helpers

use_e2e_helpers()
from containers import answers_from_every_node, build_images, first_answer, new_project, stack  # noqa: E402
from natscluster import free_ports  # noqa: E402
from test_package import install_and_first_answer  # noqa: E402

GOALS = {"package": 60, "compose": 60, "cluster": 180}


async def compose_up(image, workdir):
    keys = new_project(workdir / "single")
    port = free_ports(1)[0]
    with stack("docker", image, workdir / "single", workdir, "compose.yaml", [port]) as (_, began):
        answer = await first_answer(f"http://127.0.0.1:{port}", keys["JETSONMIND_CLIENT_KEY"])
        assert not answer.is_error, answer.content
        return time.monotonic() - began


async def cluster_up(image, workdir):
    keys = new_project(workdir / "cluster")
    ports = free_ports(3)
    # Three nodes on this host's cores: one decode thread each (see cluster.yaml).
    settings = {"JETSONMIND_THREADS": "1"}
    with stack("docker", image, workdir / "cluster", workdir, "cluster.yaml", ports, settings) as (_, began):
        node1 = f"http://127.0.0.1:{ports[0]}/mcp"
        answers = await answers_from_every_node(node1, keys["JETSONMIND_CLIENT_KEY"], 3)
        assert answers == {"compute-local": True, "compute@node2": True, "compute@node3": True}, answers
        return time.monotonic() - began


async def measure(workdir):
    began = time.monotonic()
    image = (build_images(BINARY, workdir / "images.tar"), workdir / "images.tar")
    built = time.monotonic() - began
    package = await install_and_first_answer(BINARY, workdir / "package")
    return built, {
        "package": package["total"],
        "compose": await compose_up(image, workdir / "compose"),
        "cluster": await cluster_up(image, workdir / "cluster"),
    }, package


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here too")
    options = parser.parse_args()
    require_binary()
    with tempfile.TemporaryDirectory(prefix="jm-deploy-") as workdir:
        workdir = Path(workdir)
        for part in ("package", "compose", "cluster"):
            (workdir / part).mkdir()
        built, times, package = asyncio.run(measure(workdir))
    print(f"image build (scripts/image.sh, both images): {built:.1f} s")
    print(f"package steps: install {package['install']:.1f} s, first-run {package['first_run']:.1f} s, "
          f"serve to answer {package['serve']:.1f} s")
    print(f"\n{'deploy':<10}{'to first answer':>18}{'goal':>8}{'ratio':>8}")
    for name, seconds in times.items():
        print(f"{name:<10}{seconds:>16.1f} s{GOALS[name]:>6} s{seconds / GOALS[name]:>8.2f}")
    if options.json:
        results = {"image_build_s": built, "package_steps_s": package, "to_first_answer_s": times, "goal_s": GOALS}
        options.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(times[name] < GOALS[name] for name in times) else 1


if __name__ == "__main__":
    sys.exit(main())
