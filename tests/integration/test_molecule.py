"""The Molecule scenario (create, prepare, converge, idempotence, testinfra verify, destroy)."""
import os
import subprocess

import pytest
from lab import REPO_ROOT, ansible_env

pytestmark = pytest.mark.lab


def test_molecule_default_scenario(lab):
    res = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "molecule"), "test", "-s", "default"],
                         cwd=REPO_ROOT, env=ansible_env(), capture_output=True, text=True)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-6000:]
    assert "Idempotence completed successfully" in output or "idempotence" in output.lower()
    assert " passed" in output  # testinfra ran and passed
