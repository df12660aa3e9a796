"""Which unit test modules `ansible-test units` runs in this suite (test_ansible_test_sanity.py runs it).

`ansible-test units` runs pytest its own way (a copy of the collection under ansible_collections/, its own
venv and environment, each test forked), so what breaks there is the layout: sibling imports (gpu_fixtures,
fixtures.hf_server), a test reaching the repo by a path, an ansible run inheriting ansible-test's ANSIBLE_*
settings. Every unit test module runs that way except the ones below, which start routers, hubs, stand-ins
or whole ansible runs per test: forked, their session fixtures start again for every test and they take 9 of
the 10 minutes `scripts/sanity.sh units` (all of tests/unit, which passes) takes on 2 cores; and a forked
child never tears its session fixtures down, so their servers outlive the run. Plain pytest runs them.
"""
import os

UNIT_DIR = os.path.dirname(os.path.abspath(__file__))
UNITS_FORKED_TOO_SLOW = {
    "test_gateway_router.py", "test_hf_model.py", "test_hf_model_concurrent.py", "test_hf_model_stalled.py",
    "test_run_lock.py", "test_engine_health.py", "test_engine_health_restarting.py", "test_loadgen.py",
    "test_gpu_facts.py", "test_fleet_inputs.py", "test_token_in_no_temp_file.py", "test_ansible_lint.py",
    "test_engine_standin.py", "test_galaxy_build.py", "test_hf_snapshots.py",
    "test_ansible_test_sanity.py",  # the module that runs ansible-test: it would run sanity inside units
}
# The test that runs the others under ansible-test (its node id's tail).
UNITS_TEST = "test_ansible_test_sanity.py::test_ansible_test_units_runs_the_unit_tests"


def unit_modules():
    return sorted(n for n in os.listdir(UNIT_DIR) if n.startswith("test_") and n.endswith(".py"))


def modules_under_ansible_test():
    """The unit test modules `ansible-test units` runs (file names in tests/unit)."""
    return [n for n in unit_modules() if n not in UNITS_FORKED_TOO_SLOW]
