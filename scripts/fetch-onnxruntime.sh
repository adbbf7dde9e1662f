#!/usr/bin/env bash
# ONNX Runtime's shared library (MIT), which runs the image models where it
# is there (tract, in the binary, runs them otherwise): taken from PyPI's
# onnxruntime wheel for this machine's architecture, pinned by its sha256,
# and put beside the binary (target/release), where `jetsonmind serve` looks
# for it first (compute.vision.onnxruntime_library names another place).
# The binary loads it at run time: nothing links against it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.32.0
case "$(uname -m)" in
    x86_64) platform=manylinux_2_28_x86_64
            sha256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d ;;
    aarch64) platform=manylinux_2_28_aarch64
             sha256=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c ;;
    *) echo "no onnxruntime wheel is pinned for $(uname -m): image models will run on tract" >&2
       exit 0 ;;
esac
target=${1:-target/release}
library="$target/libonnxruntime.so"
stamp="$target/libonnxruntime.sha256"
if [ -f "$library" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sha256" ]; then
    exit 0
fi
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "onnxruntime==$version --hash=sha256:$sha256" > "$download/requirements.txt"
# The library in the wheel does not depend on the Python it was built for.
.venv/bin/pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --platform "$platform" --python-version 3.11 -r "$download/requirements.txt" -d "$download"
mkdir -p "$target"
.venv/bin/python - "$download" "$library" "$version" <<'PY'
import glob, os, sys, zipfile
download, library, version = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(download, "*.whl"))[0])
with open(library + ".part", "wb") as out:
    out.write(wheel.read(f"onnxruntime/capi/libonnxruntime.so.{version}"))
os.replace(library + ".part", library)
PY
echo "$sha256" > "$stamp"
echo "ONNX Runtime $version: $library"
