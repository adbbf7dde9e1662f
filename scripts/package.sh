#!/usr/bin/env bash
# Release package: dist/jetsonmind-VERSION-ARCH.tar.gz and dist/jetsonmind_VERSION_ARCH.deb
# from the release binary that ./setup.sh built (or the one given as $1).
# Contents: /usr/bin/jetsonmind, /usr/lib/jetsonmind/first-run (fetches and imports the
# default model), /usr/lib/jetsonmind/libonnxruntime.so (ONNX Runtime, MIT, as set-up put it
# beside the binary; the image models run on tract without it), /etc/jetsonmind/jetsonmind.toml, the hardened systemd unit, the example
# config and README. The .deb's postinst creates the `jetsonmind` system user.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-target/release/jetsonmind}
[ -x "$binary" ] || { echo "$binary is missing: run ./setup.sh first" >&2; exit 1; }
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
arch=$(dpkg --print-architecture)
out=dist
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

install -D -m 0755 "$binary" "$root/usr/bin/jetsonmind"
strip --strip-unneeded "$root/usr/bin/jetsonmind"
install -D -m 0755 packaging/first-run "$root/usr/lib/jetsonmind/first-run"
onnxruntime="$(dirname "$binary")/libonnxruntime.so"
if [ -f "$onnxruntime" ]; then
    install -D -m 0644 "$onnxruntime" "$root/usr/lib/jetsonmind/libonnxruntime.so"
fi
install -D -m 0644 packaging/jetsonmind.toml "$root/etc/jetsonmind/jetsonmind.toml"
install -D -m 0644 packaging/jetsonmind.service "$root/lib/systemd/system/jetsonmind.service"
install -D -m 0644 jetsonmind.example.toml "$root/usr/share/doc/jetsonmind/jetsonmind.example.toml"
install -D -m 0644 README.md "$root/usr/share/doc/jetsonmind/README.md"

mkdir -p "$out"
tarball="$out/jetsonmind-$version-$arch.tar.gz"
tar -C "$root" --owner=0 --group=0 -czf "$tarball" .

install -D -m 0755 packaging/postinst "$root/DEBIAN/postinst"
echo /etc/jetsonmind/jetsonmind.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: jetsonmind
Version: $version
Architecture: $arch
Maintainer: JetsonMind developers <jetsonmind@localhost>
Depends: libc6, libgcc-s1, libstdc++6, libgomp1, adduser, python3
Section: net
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Description: Local AI inference as MCP servers, from one device to a cluster
 JetsonMind runs compute, data, control and gateway Model Context Protocol
 servers for local inference (llama.cpp) on an NVIDIA Jetson or any Linux box.
 After installing, run /usr/lib/jetsonmind/first-run once to fetch the default
 model, then: systemctl enable --now jetsonmind
CONTROL
deb="$out/jetsonmind_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$tarball"
echo "$deb"
