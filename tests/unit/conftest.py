"""tests/unit on sys.path, for the sibling imports (`from gpu_fixtures import ...`, `from test_hf_model import ...`).

Plain pytest already puts a test file's folder there (rootdir-based "prepend" import mode); ansible-test units
imports the tests as ansible_collections.gpufleet.serving.tests.unit.* and does not.
"""
import os
import sys

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
