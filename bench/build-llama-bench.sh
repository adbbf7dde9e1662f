#!/usr/bin/env bash
# Build llama.cpp's own llama-bench against the llama.cpp source that
# llama-cpp-sys-2 vendors (the very code JetsonMind links), with the same build
# choices: native CPU features and OpenMP (llama.cpp's own defaults).
#
# The crate ships llama.cpp without its tools, so llama-bench's own source is
# taken from the llama-cpp-python sdist on PyPI (pinned) and built on top.
# Prints the path of the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

sdist_version="0.3.36"
version=$(cargo metadata --format-version 1 --locked 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"))')
vendored=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp | head -1)
src=target/llama-bench/src
out=target/llama-bench/build
binary="$out/bin/llama-bench"
if [ -x "$binary" ]; then echo "$binary"; exit 0; fi

echo "llama.cpp library source: $vendored (llama-cpp-sys-2 $version)" >&2
rm -rf "$src" && mkdir -p "$src"
cp -r "$vendored"/. "$src"/
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --no-deps --no-binary :all: --quiet -d "$work" "llama-cpp-python==$sdist_version"
tar xzf "$work"/llama_cpp_python-"$sdist_version".tar.gz -C "$work" \
    "llama_cpp_python-$sdist_version/vendor/llama.cpp/tools/llama-bench"
cp "$work/llama_cpp_python-$sdist_version/vendor/llama.cpp/tools/llama-bench"/* "$src/tools/llama-bench/"
echo 'add_subdirectory(llama-bench)' > "$src/tools/CMakeLists.txt"

cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$out" --target llama-bench -j "$(nproc)" >&2
echo "$binary"
