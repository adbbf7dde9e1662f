"""The Helm chart deploy/helm/jetsonmind, validated offline: no Kubernetes API server can run on these
machines, so nothing here is applied to a cluster. `helm lint --strict`; `helm template` rendered and
checked by kubernetes-validate --strict against Kubernetes 1.37's schemas; the rendered configurations
checked by the programs that will read them (`jetsonmind config`, `nats-server -t`); and values that
are wrong (tests/helm/broken-values.yaml, and each mistake alone) refused. helm comes from
scripts/fetch-k8s-tools.sh (./setup.sh runs it)."""

import os
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run
from natscluster import NATS_SERVER

CHART = ROOT / "deploy" / "helm" / "jetsonmind"
HELM = ROOT / "tools" / "k8s" / "bin" / "helm"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
BROKEN = ROOT / "tests" / "helm" / "broken-values.yaml"
KEY = "jm_client_" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run scripts/fetch-k8s-tools.sh (./setup.sh does)")
    home = tmp_path_factory.mktemp("helm")
    env = {**os.environ, **{f"HELM_{kind}_HOME": str(home / kind) for kind in ("CACHE", "CONFIG", "DATA")}}

    return lambda *args: run([str(HELM), *args], env=env, timeout=120, check=False)


def render(helm, *values):
    """The chart's objects with `values` (`--set` strings): {(kind, name): object}."""
    sets = [arg for value in ("auth.clientKey=" + KEY, *values) for arg in ("--set", value)]
    rendered = helm("template", "jm", str(CHART), "--namespace", "edge", *sets)
    assert rendered.returncode == 0, rendered.stderr
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered.stdout) if o}


def test_the_chart_lints_and_renders_objects_kubernetes_accepts(helm, tmp_path):
    linted = helm("lint", "--strict", str(CHART), "--set", f"auth.clientKey={KEY}")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    for variant in ([], ["nats.enabled=false", "nats.externalUrls={nats://nats.example:4222}"]):
        sets = [arg for value in ("auth.clientKey=" + KEY, *variant) for arg in ("--set", value)]
        rendered = tmp_path / "rendered.yaml"
        rendered.write_text(helm("template", "jm", str(CHART), *sets).stdout)
        checked = run([str(VALIDATE), "--strict", str(rendered)], check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count(" passed for resource ") == rendered.read_text().count("\nkind: "), checked.stdout


def test_the_rendered_cluster_is_what_the_issue_asks(helm):
    objects = render(helm)
    nodes = objects[("DaemonSet", "jm-jetsonmind")]["spec"]["template"]["spec"]
    assert nodes["runtimeClassName"] == "nvidia"
    assert nodes["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    node = nodes["containers"][0]
    assert node["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert node[probe]["httpGet"]["path"] == path
        # The kubelet would send the pod's address as Host, which the server refuses.
        assert node[probe]["httpGet"]["httpHeaders"] == [{"name": "Host", "value": "localhost"}]
    assert node["securityContext"]["readOnlyRootFilesystem"] and nodes["securityContext"]["runAsNonRoot"]
    nats = objects[("StatefulSet", "jm-jetsonmind-nats")]["spec"]
    assert nats["replicas"] == 3 and nats["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert objects[("PodDisruptionBudget", "jm-jetsonmind-nats")]["spec"]["minAvailable"] == 2
    assert objects[("PodDisruptionBudget", "jm-jetsonmind")]["spec"]["maxUnavailable"] == 1
    assert objects[("Service", "jm-jetsonmind")]["spec"]["ports"][0]["port"] == 8080
    assert objects[("Secret", "jm-jetsonmind-keys")]["stringData"]["client-key"] == KEY
    job = objects[("Job", "jm-jetsonmind-keys")]
    assert "--key-from-env" in job["spec"]["template"]["spec"]["containers"][0]["args"]

    cpu_only = render(helm, "node.gpus=0", "node.runtimeClassName=")
    spec = cpu_only[("DaemonSet", "jm-jetsonmind")]["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec and "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    external = render(helm, "nats.enabled=false", "nats.externalUrls={nats://nats.example:4222}")
    assert not [key for key in external if "nats" in key[1]], "no NATS of the chart's own"
    assert 'urls = ["nats://nats.example:4222"]' in external[("ConfigMap", "jm-jetsonmind")]["data"]["jetsonmind.toml"]


def test_the_rendered_configurations_are_read_by_their_programs(helm, binary, tmp_path):
    objects = render(helm)
    config = tmp_path / "jetsonmind.toml"
    config.write_text(objects[("ConfigMap", "jm-jetsonmind")]["data"]["jetsonmind.toml"])
    shown = run([str(binary), "--config", str(config), "config"], check=False)
    assert shown.returncode == 0, shown.stderr
    assert 'urls = ["nats://jm-jetsonmind-nats:4222"]' in shown.stdout
    assert '"jm-jetsonmind.edge.svc.cluster.local"' in shown.stdout
    nats = tmp_path / "nats.conf"
    nats.write_text(objects[("ConfigMap", "jm-jetsonmind-nats")]["data"]["nats.conf"])
    tested = run([str(NATS_SERVER), "-t", "-c", str(nats)], env={**os.environ, "POD_NAME": "jm-jetsonmind-nats-0"},
                 check=False)
    assert tested.returncode == 0 and "is valid" in tested.stdout + tested.stderr, tested.stderr


LINT = ["lint", "--strict", str(CHART)]
TEMPLATE = ["template", "jm", str(CHART)]


@pytest.mark.parametrize(
    "wrong, said, refusing",
    [
        # Against values.schema.json: lint and template both refuse.
        (["-f", str(BROKEN)], "gatway", [LINT, TEMPLATE]),
        (["--set", "nats.replicas=three"], "replicas", [LINT, TEMPLATE]),
        (["--set", "node.gpus=-1"], "gpus", [LINT, TEMPLATE]),
        (["--set", "node.resources.limits.memory=lots"], "memory", [LINT, TEMPLATE]),
        (["--set", "auth.clientKey=letmein"], "clientKey", [LINT, TEMPLATE]),
        # What the templates require (helm lint only reports these): template refuses.
        (["--set", "nats.enabled=false"], "nats.externalUrls", [TEMPLATE]),
        ([], "auth.clientKey", [TEMPLATE]),
    ],
)
def test_wrong_values_are_refused_with_what_is_wrong(helm, wrong, said, refusing):
    key = ["--set", f"auth.clientKey={KEY}"] if wrong and "clientKey" not in " ".join(wrong) else []
    for command in refusing:
        refused = helm(*command, *key, *wrong)
        assert refused.returncode != 0, f"{command[0]} accepted {wrong}"
        assert said in refused.stdout + refused.stderr, refused.stdout + refused.stderr
