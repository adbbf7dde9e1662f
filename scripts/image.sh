#!/usr/bin/env bash
# Builds the JetsonMind container image without any registry: a Debian root
# filesystem made from Debian packages by mmdebstrap (cached in
# build/container/), imported with podman as localhost/jetsonmind-base, and
# the release binary copied on top (packaging/container/Containerfile).
#
#   scripts/image.sh [BINARY] [--save FILE]
#
# Prints the image's name (localhost/jetsonmind:<version>, also tagged
# :latest). BINARY is target/release/jetsonmind unless given (./setup.sh
# builds it). --save writes the image as an archive for `docker load`.
# Needs podman and mmdebstrap (./setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

save=""
binary=target/release/jetsonmind
while [ $# -gt 0 ]; do
    case "$1" in
        --save) save=${2:?"--save FILE"}; shift 2 ;;
        -*) echo "usage: scripts/image.sh [BINARY] [--save FILE]" >&2; exit 2 ;;
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

version=$("$binary" --version | awk '{print $2}')
image=localhost/jetsonmind:$version
context=$work/context
rm -rf "$context" && mkdir -p "$context"
cp packaging/container/Containerfile "$context/"
# A hard link where it can be: the context is read, never written.
ln "$binary" "$context/jetsonmind" 2>/dev/null || cp "$binary" "$context/jetsonmind"
podman build --quiet --build-arg "BASE=$base" -t "$image" -t localhost/jetsonmind:latest \
    -f "$context/Containerfile" "$context" >/dev/null
rm -rf "$context"
if [ -n "$save" ]; then
    rm -f "$save"
    podman save --quiet -o "$save" "$image" localhost/jetsonmind:latest
fi
echo "$image"
