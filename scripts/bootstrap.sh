#!/usr/bin/env bash
# Installs what the lab and the tests need on a fresh Debian 12 machine, idempotently:
# Debian packages (Docker engine, debootstrap, git-lfs, ssh client) and the pinned Python venv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

need_pkgs=()
# The shellcheck package: ansible-test sanity's shellcheck test (scripts/sanity.sh) is skipped, not failed, without it.
for pair in dockerd:docker.io debootstrap:debootstrap git-lfs:git-lfs ssh:openssh-client rsync:rsync shellcheck:shellcheck; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing ${need_pkgs[*]}: run as root or install them" >&2; exit 1; }
  echo "[bootstrap] apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The venv is rebuilt only when requirements.txt or the controller's file it includes changes.
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-controller.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] creating .venv from requirements.txt"
  python3 -m venv .venv
  # --no-compile: Python compiles what it imports on first use, not the whole of every package.
  .venv/bin/pip install -q --disable-pip-version-check --no-compile -r requirements.txt
  echo "$want" > "$stamp"
fi
