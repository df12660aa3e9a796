#!/usr/bin/env bash
# The lab demo: installs what is missing, brings the offline lab fleet up, runs site.yml on it.
# Run it again: the lab is kept and site.yml reports changed=0 everywhere.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh
.venv/bin/python lab/labctl.py up
export PATH="$ROOT/.venv/bin:$PATH"
exec ansible-playbook site.yml -i inventories/lab "$@"
