#!/usr/bin/env bash
# All tests: unit tests of the plugins, ansible-test sanity and docs lint, the real SGLang/vLLM parser
# check, and integration tests on the lab fleets (site.yml twice, bad inputs, rollouts through the gateway,
# the Molecule scenarios). Installs what it needs itself.
#
# Three lanes run at once, each on fleets and containers no other lane touches (README "Tests"):
#   A  unit tests (sanity included), the real-parser check, the fetch and ansible-runner fleets,
#      the toolkit Molecule scenario
#   B  the built-in lab (site.yml, the gateway) and the default Molecule scenario
#   C  the rollout fleet and the driver Molecule scenario
# Much of each lane waits (engines loading, routers draining, apt in containers), so three lanes keep two
# cores busier than two did.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh
# The real-parser venvs (pip: mostly download and unpack) build while the lab builds its images and lane B
# starts. Lane A's parser tests wait for them: setup_venv.sh locks each venv, and the tests run it again (a
# no-op once built, a rebuild with its error in the test output if this one failed).
mkdir -p .cache
parser_venvs() {
  tests/parsers/setup_venv.sh || return
  local f names=()
  for f in tests/parsers/requirements-*-*.txt; do f=${f##*/requirements-}; names+=("${f%.txt}"); done
  printf '%s\n' "${names[@]}" | xargs -r -P "${#names[@]}" -n 1 tests/parsers/setup_venv.sh
}
parser_venvs >.cache/setup-venv-parsers-all.log 2>&1 &
.venv/bin/python lab/labctl.py up
export PATH="$ROOT/.venv/bin:$PATH"
# Missing prerequisites are failures here, never skips.
export GPUFLEET_REQUIRE_REAL_PARSERS=1 GPUFLEET_REQUIRE_LAB=1

export GPUFLEET_REQUIRE_SANITY=1

LANE_A=(tests/unit tests/parsers tests/integration/test_model_fetch_fleet.py tests/integration/test_ansible_runner.py
        "tests/integration/test_molecule_driver_toolkit.py::test_molecule_scenario[toolkit-5]")
LANE_C=(tests/integration/test_rollout.py "tests/integration/test_molecule_driver_toolkit.py::test_molecule_scenario[driver-7]"
        tests/integration/test_molecule_driver_toolkit.py::test_debian12_archive_resolves_the_distro_plan)
# Lane B: everything else under tests/ (the built-in lab's modules, test_molecule.py, anything new).
LANE_B=(tests --ignore=tests/unit --ignore=tests/parsers --ignore=tests/integration/test_model_fetch_fleet.py
        --ignore=tests/integration/test_ansible_runner.py --ignore=tests/integration/test_rollout.py
        --ignore=tests/integration/test_molecule_driver_toolkit.py)
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider -rfEs --durations=15)

logs=$(mktemp -d /tmp/gpufleet-lanes.XXXXXX)
lane_a="" lane_c=""
# A stopped run stops its background lanes too (they would go on using the lab fleets' fixed addresses).
trap 'kill $lane_a $lane_c 2>/dev/null || true; rm -rf "$logs"' EXIT
trap 'exit 130' INT TERM
"${PYTEST[@]}" "${LANE_A[@]}" "$@" >"$logs/a" 2>&1 &
lane_a=$!
"${PYTEST[@]}" "${LANE_C[@]}" "$@" >"$logs/c" 2>&1 &
lane_c=$!

set +e
start=$SECONDS
echo "== lane B: the built-in lab and the default Molecule scenario (lanes A and C follow when all are done)"
"${PYTEST[@]}" "${LANE_B[@]}" "$@"
rc_b=$?
wait "$lane_a"
rc_a=$?
wait "$lane_c"
rc_c=$?
set -e
echo
echo "== lane A: unit tests, sanity, real parsers, the fetch and ansible-runner fleets, toolkit Molecule"
cat "$logs/a"
echo
echo "== lane C: the rollout fleet, driver Molecule"
cat "$logs/c"
echo "== lane A exit $rc_a, lane B exit $rc_b, lane C exit $rc_c ($((SECONDS - start)) s for the lanes)"
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ] && [ "$rc_c" -eq 0 ]
