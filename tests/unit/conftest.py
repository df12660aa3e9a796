"""tests/unit on sys.path, for the sibling imports (`from gpu_fixtures import ...`, `from test_hf_model import ...`).

Plain pytest already puts a test file's folder there (rootdir-based "prepend" import mode); ansible-test units
imports the tests as ansible_collections.gpufleet.serving.tests.unit.* and does not.
"""
import os
import sys

import pytest

UNIT_DIR = os.path.dirname(os.path.abspath(__file__))
if UNIT_DIR not in sys.path:
    sys.path.insert(0, UNIT_DIR)

# ansible-test units exports settings meant for its own ansible runs: ANSIBLE_CONFIG (an empty config),
# ANSIBLE_INVENTORY=/dev/null, ANSIBLE_LIBRARY=/dev/null, ANSIBLE_HOST_PATTERN_MISMATCH=error, ... The tests
# that run ansible / ansible-playbook here choose their config and inventory themselves (the checkout's
# ansible.cfg, or an empty one in tmp_path): without these, both runners give those commands the same settings.
for _name in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY", "ANSIBLE_LIBRARY", "ANSIBLE_HOST_PATTERN_MISMATCH",
              "ANSIBLE_FORCE_HANDLERS"):
    os.environ.pop(_name, None)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they do
def pytest_collection_modifyitems(config, items):
    """With test_ansible_test_units_runs_the_unit_tests in the session (and GPUFLEET_REQUIRE_SANITY set, so it
    runs), the modules it runs under ansible-test are not run a second time by plain pytest."""
    if not os.environ.get("GPUFLEET_REQUIRE_SANITY"):
        return
    from units_under_ansible_test import UNITS_TEST, modules_under_ansible_test

    if not any(item.nodeid.endswith(UNITS_TEST) for item in items):
        return
    covered = set(modules_under_ansible_test())
    run_there = [item for item in items if os.path.basename(str(item.path)) in covered]
    if run_there:
        config.hook.pytest_deselected(items=run_there)
        items[:] = [item for item in items if os.path.basename(str(item.path)) not in covered]
