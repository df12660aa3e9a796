#!/usr/bin/env bash
# Builds the lab's Debian base image locally (no registry can be reached, so nothing is pulled):
# debootstrap from Debian's mirror, then `docker import`. Cached: skipped when the image exists
# with the same recipe hash label.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE=${GPUFLEET_BASE_IMAGE:-gpufleet/debian-base:bookworm}
SUITE=${GPUFLEET_BASE_SUITE:-bookworm}
MIRROR=${GPUFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Everything the engine stand-in and the lab hosts need at their base.
PACKAGES=python3,ca-certificates,iproute2,procps,curl
CACHE=${GPUFLEET_CACHE:-$HERE/../../.cache}/images

recipe_hash=$(printf '%s|%s|%s' "$SUITE" "$PACKAGES" "$(sha256sum "$0" | cut -c1-16)" | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "gpufleet.recipe"}}' "$IMAGE" 2>/dev/null)" = "$recipe_hash" ]; then
  echo "base image $IMAGE is current ($recipe_hash)"; exit 0
fi

mkdir -p "$CACHE"
tarball="$CACHE/debian-base-$SUITE-$recipe_hash.tar"
if [ ! -s "$tarball" ]; then
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap $SUITE ($PACKAGES) from $MIRROR ..."
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  # Slim down, and reset the lists dir mtime so apt's cache_valid_time does not trust an empty cache.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  touch -d @0 "$rootfs/var/lib/apt/lists"
  echo "deb $MIRROR $SUITE main contrib non-free non-free-firmware" >"$rootfs/etc/apt/sources.list"
  tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
docker import --change "LABEL gpufleet.recipe=$recipe_hash" --change 'CMD ["/bin/bash"]' "$tarball" "$IMAGE" >/dev/null
echo "built $IMAGE ($recipe_hash)"
