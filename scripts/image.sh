#!/usr/bin/env bash
# Builds the JetsonMind container image without any registry: a Debian root
# filesystem made from Debian packages by mmdebstrap (cached in
# build/container/), imported with podman as localhost/jetsonmind-base, and
# the release binary copied on top (packaging/container/Containerfile), with
# ONNX Runtime's library where set-up put it beside the binary.
#
#   scripts/image.sh [BINARY] [--nats-server PATH] [--save FILE]
#
# Prints the image's name (localhost/jetsonmind:<version>, also tagged
# :latest). BINARY is target/release/jetsonmind unless given (./setup.sh
# builds it). --nats-server also builds localhost/jetsonmind-nats (:<its
# version> and :latest) around that nats-server binary, for the cluster
# compose file. --save writes the images built as one archive for
# `docker load`. Needs podman and mmdebstrap (./setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

save=""
nats_server=""
binary=target/release/jetsonmind
while [ $# -gt 0 ]; do
    case "$1" in
        --save) save=${2:?"--save FILE"}; shift 2 ;;
        --nats-server) nats_server=${2:?"--nats-server PATH"}; shift 2 ;;
        -*) echo "usage: scripts/image.sh [BINARY] [--nats-server PATH] [--save FILE]" >&2; exit 2 ;;
        *) binary=$1; shift ;;
    esac
done
[ -x "$binary" ] || { echo "$binary is missing: run ./setup.sh (or cargo build --release)" >&2; exit 1; }
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/packaging/container/containers.conf}
work=build/container
mkdir -p "$work"

# The base is the host's Debian release: the binary links against its glibc.
. /etc/os-release
suite=${VERSION_CODENAME:?"no VERSION_CODENAME in /etc/os-release"}
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
base=localhost/jetsonmind-base:$suite
if ! podman image exists "$base"; then
    rootfs=$work/rootfs-$suite.tar
    if [ ! -f "$rootfs" ]; then
        # curl for healthchecks; libgomp1 for llama.cpp's threads.
        mmdebstrap --quiet --format=tar --variant=minbase --include=ca-certificates,curl,libgomp1 \
            "$suite" "$rootfs.part" ${mirror:+"$mirror"}
        mv "$rootfs.part" "$rootfs"
    fi
    podman import --quiet --change 'CMD ["/bin/bash"]' "$rootfs" "$base" >/dev/null
fi

# Put FILE into the build context's DIR (a hard link where it can be: the
# context is read, never written).
place() {
    mkdir -p "$2"
    ln "$1" "$2/$(basename "$1")" 2>/dev/null || cp "$1" "$2/"
}

# build CONTAINERFILE FILE NAME:TAG...: an image of FILE on the base, with the
# files of the array `libraries` in the context's lib/ (empty: none).
build() {
    local containerfile=$1 file=$2 context=$work/context tags=()
    shift 2
    for tag in "$@"; do tags+=(-t "$tag"); done
    rm -rf "$context" && mkdir -p "$context/lib"
    cp "$containerfile" "$context/Containerfile"
    place "$file" "$context"
    for library in "${libraries[@]}"; do place "$library" "$context/lib"; done
    local before
    before=$(podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true)
    podman build --quiet --build-arg "BASE=$base" "${tags[@]}" -f "$context/Containerfile" "$context" >/dev/null
    rm -rf "$context"
    # The image these tags named before, now untagged, unless a container still uses it.
    if [ -n "$before" ] && [ "$before" != "$(podman image inspect --format '{{.Id}}' "$1")" ]; then
        podman rmi "$before" >/dev/null 2>&1 || true
    fi
}

version=$("$binary" --version | awk '{print $2}')
image=localhost/jetsonmind:$version
[ "$(basename "$binary")" = jetsonmind ] || { echo "$binary: the binary must be named jetsonmind" >&2; exit 1; }
libraries=()
onnxruntime="$(dirname "$binary")/libonnxruntime.so"
[ -f "$onnxruntime" ] && libraries=("$onnxruntime")
build packaging/container/Containerfile "$binary" "$image" localhost/jetsonmind:latest
libraries=()
images=("$image" localhost/jetsonmind:latest)
if [ -n "$nats_server" ]; then
    [ "$(basename "$nats_server")" = nats-server ] || { echo "$nats_server: must be named nats-server" >&2; exit 1; }
    nats_version=$("$nats_server" --version | awk '{print $NF}')
    build packaging/container/Containerfile.nats "$nats_server" \
        "localhost/jetsonmind-nats:${nats_version#v}" localhost/jetsonmind-nats:latest
    images+=("localhost/jetsonmind-nats:${nats_version#v}" localhost/jetsonmind-nats:latest)
fi
if [ -n "$save" ]; then
    rm -f "$save"
    podman save --quiet -m -o "$save" "${images[@]}"
fi
echo "$image"
