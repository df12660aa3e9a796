"""The Molecule scenario (create, prepare, converge, idempotence, testinfra verify, destroy)."""
import os
import re
import subprocess

import pytest
from lab import REPO_ROOT, ansible_env

pytestmark = pytest.mark.lab


def test_molecule_default_scenario(lab):
    res = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "molecule"), "test", "-s", "default"],
                         cwd=REPO_ROOT, env=ansible_env(), capture_output=True, text=True)
    output = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
    assert res.returncode == 0, output[-6000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"default ➜ {step}: Executed: Successful" in output, step
    assert re.search(r"=+ 4 passed", output), "the testinfra verifier did not run its 4 checks"
