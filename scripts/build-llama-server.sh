#!/usr/bin/env bash
# Build llama.cpp's own `llama-server`, a real OpenAI-compatible server we did not write, into
# tools/llama-server/bin for the e2e tests (the cloud tier's peer). Source: the llama.cpp that the
# pinned llama-cpp-python sdist on PyPI vendors, one self-consistent tree (the llama-cpp-2 crate's
# copy has no server sources). Safe to run again: skips when the binary of this pin is there.
set -euo pipefail
cd "$(dirname "$0")/.."

version="0.3.35"
sdist="llama_cpp_python-$version.tar.gz"
url="https://files.pythonhosted.org/packages/1a/71/5ecdad726b87527b361d9d95313c6591f27bb3fad79c9ab524ad4250b4c9/$sdist"
sha256="1139dbb54509074b70893fab8554e3b079aa9f4d312058ce4018ef0019e3de12"
# The commit llama-cpp-python v0.3.35 pins as its vendor/llama.cpp submodule. The sdist has no
# git metadata, so the build is told it (else it would report "unknown", or, built inside this
# repository, this repository's commit).
llama_commit="4df29be4f4c3673f428170fda944a5b19f743bb8"

dest="tools/llama-server/bin"
binary="$dest/llama-server"
stamp="$dest/PIN"
pin="llama-cpp-python==$version llama.cpp@$llama_commit"

if [ -x "$binary" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pin" ]; then
    echo "$binary: present ($pin)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/$sdist" "$url"
echo "$sha256  $work/$sdist" | sha256sum --check --quiet
mkdir "$work/llama.cpp"
tar -xzf "$work/$sdist" -C "$work/llama.cpp" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"

# Static (no libllama.so beside it), server only: no web UI (the prebuilt one is a download),
# no HTTPS, no tests or examples. Native CPU flags: it is built on the machine that runs it.
# nice: other builds on this machine keep priority.
nice -n 19 cmake -S "$work/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_COMMIT="${llama_commit:0:9}" -DLLAMA_BUILD_NUMBER=0 >"$work/configure.log" ||
    { cat "$work/configure.log" >&2; exit 1; }
nice -n 19 cmake --build "$work/build" --target llama-server -j 2

mkdir -p "$dest"
rm -f "$stamp"
cp "$work/build/bin/llama-server" "$binary.partial"
mv "$binary.partial" "$binary"
echo "$pin" >"$stamp"
echo "$binary: built ($pin)"
"$binary" --version
