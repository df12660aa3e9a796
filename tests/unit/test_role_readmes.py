"""Each role's README.md is what scripts/role_readmes.py writes from its meta/argument_specs.yml now,
and each role has the meta/main.yml Galaxy reads."""
import os
import re
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "role_readmes.py")
ROLES = sorted(os.listdir(os.path.join(REPO, "roles")))


def test_every_readme_is_what_the_script_writes():
    run = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("role", ROLES)
def test_readme_has_every_variable_and_no_ansible_markup(role):
    with open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml"), encoding="utf-8") as f:
        specs = yaml.safe_load(f)["argument_specs"]
    with open(os.path.join(REPO, "roles", role, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for entry in specs.values():
        for name in entry.get("options") or {}:
            assert f"`{name}`" in text
    assert re.findall(r"\b(?:RV|[CVOEMPIBUL])\([^)]*\)", text) == []


@pytest.mark.parametrize("role", ROLES)
def test_galaxy_info(role):
    with open(os.path.join(REPO, "roles", role, "meta", "main.yml"), encoding="utf-8") as f:
        info = yaml.safe_load(f)["galaxy_info"]
    assert info["role_name"] == role and info["license"] == "Apache-2.0"
    assert info["author"] and info["description"] and info["min_ansible_version"] and info["platforms"]
