#!/usr/bin/env bash
# All tests: unit tests of the plugins, the real SGLang/vLLM parser check, and integration tests on
# the lab fleet (site.yml twice, bad inputs, the Molecule scenario). Installs what it needs itself.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh
tests/parsers/setup_venv.sh
.venv/bin/python lab/labctl.py up
export PATH="$ROOT/.venv/bin:$PATH"
# Missing prerequisites are failures here, never skips.
export GPUFLEET_REQUIRE_REAL_PARSERS=1 GPUFLEET_REQUIRE_LAB=1
exec .venv/bin/python -m pytest tests -p no:cacheprovider -rs "$@"
