#!/usr/bin/env bash
# The fast lane for day-to-day work (no lab): the plugins' unit tests, the gateway's tests against the
# real smg router and the engine stand-in on loopback, ansible-lint, ansible-test sanity and units,
# antsibull-docs lint, role READMEs, changelog and Galaxy tarball checks (all in tests/unit), and the
# playbooks' syntax. scripts/test.sh runs all of this and the lab too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh
export PATH="$ROOT/.venv/bin:$PATH" GPUFLEET_REQUIRE_SANITY=1
for playbook in site.yml playbooks/*.yml; do
  ansible-playbook --syntax-check -i inventories/lab "$playbook" >/dev/null
done
exec .venv/bin/python -m pytest tests/unit -p no:cacheprovider "$@"
