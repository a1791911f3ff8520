#!/usr/bin/env bash
# Builds the pifleet image from binaries compiled on this machine, with no base image: the
# release binaries plus exactly the shared libraries they link (found with ldd) on top of
# `scratch`. This is how the tests build images on a machine that cannot pull from a registry,
# and it is the quickest way to build on a Raspberry Pi (run it there for an arm64 image).
#
# usage: docker/build-local-image.sh [TAG]       (default tag: pifleet:latest)
# env:   PIFLEET_SKIP_CARGO=1  use the release binaries as they are (CARGO_TARGET_DIR is honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-pifleet:latest}"
bins=(pifleet-broker pifleet-agent pifleet)
release="${CARGO_TARGET_DIR:-target}/release"

if [ "${PIFLEET_SKIP_CARGO:-0}" != 1 ]; then
  cargo build --release --bins
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/data"
for b in "${bins[@]}"; do
  cp "$release/$b" "$ctx/rootfs/usr/local/bin/$b"
done
# Every library the binaries need, at the path the dynamic loader looks for it.
for lib in $(ldd "${bins[@]/#/$release/}" | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
# Name resolution (service names on a Compose network) without NSS plugins: glibc >= 2.34 has
# files and dns built in.
printf 'hosts: files dns\n' > "$ctx/rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$ctx/rootfs/etc/group"
chmod 1777 "$ctx/rootfs/tmp"
cp docker/Dockerfile.local "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1000000}'))"
