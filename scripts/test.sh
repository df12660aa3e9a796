#!/usr/bin/env bash
# All tests: unit tests of the plugins, the real SGLang/vLLM parser check, and integration tests on
# the lab fleets (site.yml twice, bad inputs, rollouts through the gateway, the Molecule scenarios).
# Installs what it needs itself.
#
# Two lanes run at once, each on fleets the other never touches: lane A the unit tests, the parser check,
# the Molecule scenarios (containers of their own) and the fleets of the fetch and ansible-runner tests;
# lane B the built-in lab (site.yml, gateway) and the rollout fleet. Both take about the same time, so the
# whole run takes about half as long as one after the other (docs: README "Tests").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh
tests/parsers/setup_venv.sh
.venv/bin/python lab/labctl.py up
export PATH="$ROOT/.venv/bin:$PATH"
# Missing prerequisites are failures here, never skips.
export GPUFLEET_REQUIRE_REAL_PARSERS=1 GPUFLEET_REQUIRE_LAB=1

LANE_A=(tests/unit tests/parsers tests/integration/test_molecule.py tests/integration/test_molecule_driver_toolkit.py
        tests/integration/test_model_fetch_fleet.py tests/integration/test_ansible_runner.py)
IGNORE_A=()
for path in "${LANE_A[@]}"; do IGNORE_A+=(--ignore="$path"); done
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider -rfEs --durations=15)

lane_a_log=$(mktemp /tmp/gpufleet-lane-a.XXXXXX)
trap 'rm -f "$lane_a_log"' EXIT
"${PYTEST[@]}" "${LANE_A[@]}" "$@" >"$lane_a_log" 2>&1 &
lane_a=$!

set +e
echo "== lane B: the built-in lab and the rollout fleet (lane A's output follows when both are done)"
"${PYTEST[@]}" tests "${IGNORE_A[@]}" "$@"
rc_b=$?
wait "$lane_a"
rc_a=$?
set -e
echo
echo "== lane A: unit tests, real parsers, Molecule, the fetch and ansible-runner fleets"
cat "$lane_a_log"
echo "== lane A exit $rc_a, lane B exit $rc_b"
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ]
