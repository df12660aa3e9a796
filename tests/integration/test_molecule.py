"""The Molecule scenario (create, prepare, converge, idempotence, testinfra verify, destroy)."""
import os
import re
import subprocess

import pytest
import yaml
from lab import REPO_ROOT, ansible_env

pytestmark = pytest.mark.lab


def test_molecule_default_scenario(lab):
    res = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "molecule"), "test", "-s", "default"],
                         cwd=REPO_ROOT, env=ansible_env(), capture_output=True, text=True, check=False)
    output = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
    assert res.returncode == 0, output[-6000:]
    # Molecule exits non-zero when any step fails, idempotence (a second converge with changes) included.
    with open(os.path.join(REPO_ROOT, "molecule", "default", "molecule.yml")) as f:
        sequence = yaml.safe_load(f)["scenario"]["test_sequence"]
    assert {"converge", "idempotence", "verify"} <= set(sequence)
    assert re.search(r"default\s+: actions=\d+\s+successful=\d+.*failed=0", output), output[-3000:]
    assert re.search(r"=+ 4 passed", output), "the testinfra verifier did not run its 4 checks"
