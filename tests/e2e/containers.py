"""Container engines for the deployment tests, started here and stopped after: Debian's dockerd (its own
data root and socket, no iptables, stopped by its PID) and podman; and a compose project on either
(docker-compose against that dockerd, or podman-compose).

podman reads packaging/container/containers.conf (CONTAINERS_CONF), as scripts/image.sh does: this
VM's limits and cgroup layout need it."""

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from natscluster import _die_with_parent, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "packaging" / "container" / "containers.conf"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def run(command, env=None, timeout=300, check=True, cwd=None):
    """`command`, its output captured; a failure says what it printed."""
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


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

    def cli(self, *args, check=True):
        """The engine's own CLI (docker or podman)."""
        return run([self.engine, *args], env=self.env, check=check)

    def down(self):
        """Everything the project made, its volumes too."""
        self("down", "-v", "-t", "10", check=False)
        if self.engine == "podman":  # podman-compose 1.0.3 leaves named volumes behind
            names = self.cli("volume", "ls", "-q", check=False).stdout.split()
            for name in (n for n in names if n.startswith(f"{self.project}_")):
                self.cli("volume", "rm", "-f", name, check=False)

    def logs(self):
        return self("logs", check=False).stdout[-20000:]
