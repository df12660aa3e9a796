#!/usr/bin/env bash
# Build the gateway's router image from the pinned smg wheel: build.sh IMAGE [BASE]
#   roles/gateway/files/image/build.sh registry.example.com/gpufleet/smg:1.13.0
# Production sites run this in their CI and push the image (gateway_image) or save it for air-gapped hosts
# (gateway_image_archive). BASE must have CPython 3.11 (default python:3.11-slim-bookworm; the lab uses its
# debootstrapped Debian 12). The wheels come from PyPI, or from a local index given the usual pip way
# (PIP_INDEX_URL, PIP_FIND_LINKS); SMG_SITE_CACHE reuses an installed site/ between builds; IMAGE_LABEL
# (key=value) labels the image.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE=${1:?usage: build.sh IMAGE [BASE]}
BASE=${2:-python:3.11-slim-bookworm}
SMG_VERSION=${SMG_VERSION:-1.13.0}
PYTHON=${PYTHON:-python3}

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
site=${SMG_SITE_CACHE:-$ctx/site-install}
if [ ! -f "$site/.smg-$SMG_VERSION" ]; then
  rm -rf "$site"
  # Binary wheels for the image's Python, whatever the machine that builds it runs.
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$site" --only-binary=:all: \
    --implementation cp --python-version 3.11 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "smg==$SMG_VERSION"
  touch "$site/.smg-$SMG_VERSION"
fi
cp -a "$site" "$ctx/site"
cp "$HERE/Dockerfile" "$HERE/launch.py" "$ctx/"
docker build -q --build-arg BASE="$BASE" --build-arg SMG_VERSION="$SMG_VERSION" \
  ${IMAGE_LABEL:+--label "$IMAGE_LABEL"} -t "$IMAGE" "$ctx"
