"""The driver and container toolkit Molecule scenarios, and the driver plan against Debian's real archive.

molecule/driver and molecule/toolkit install from the lab's signed stand-in of NVIDIA's repositories
(lab/nvidia-repo) on lab-host containers of their own: converge, idempotence (changed=0), side
effects (branch 580 -> 535, a driver change under the CDI spec, a toolkit upgrade), testinfra.
"""
import os
import re
import subprocess
import uuid

import pytest
from lab import REPO_ROOT, ansible_env

from ansible_collections.gpufleet.serving.plugins.module_utils.driver_packages import driver_packages

pytestmark = pytest.mark.lab

LAB_HOST_IMAGE = "gpufleet/lab-host:bookworm"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def molecule_test(scenario):
    res = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "molecule"), "test", "-s", scenario],
                         cwd=REPO_ROOT, env=ansible_env(), capture_output=True, text=True, check=False)
    return res.returncode, ANSI.sub("", res.stdout + res.stderr)


@pytest.mark.parametrize("scenario,tests", [("driver", 7), ("toolkit", 5)])
def test_molecule_scenario(lab, scenario, tests):
    rc, output = molecule_test(scenario)
    assert rc == 0, output[-6000:]
    # Molecule writes "driver ➜ idempotence: ..." to a terminal and "[driver > idempotence] ..." to a pipe.
    for step in ("idempotence", "side_effect", "verify"):
        assert re.search(r"\b%s\W{1,3}Executed: Successful" % step, output), output[-3000:]
    assert re.search(r"\b%d passed\b" % tests, output), output[-3000:]  # every testinfra test ran and passed


@pytest.mark.parametrize("open_modules", [True, False])
def test_debian12_archive_resolves_the_distro_plan(lab, open_modules):
    """Debian's real non-free/contrib packages (deb.debian.org) for the planner's Debian 12 set.

    Resolved with apt-get --simulate in a throwaway lab-host container: installing would build the
    module with DKMS, which needs headers for a kernel Debian does not ship (this machine's), and a
    container cannot load it anyway. The install/hold/branch-change path runs in molecule/driver.
    """
    packages = driver_packages("debian12", "distro", "535", open_modules)
    name = "gpufleet-drvtest-apt-%s" % uuid.uuid4().hex[:8]
    script = "apt-get update -qq && apt-get install --simulate --no-install-recommends %s" % " ".join(
        "'%s'" % p for p in packages)
    res = subprocess.run(["docker", "run", "--rm", "--name", name, LAB_HOST_IMAGE, "bash", "-c", script],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    installs = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("Inst ")]
    kmod = "nvidia-open-kernel-dkms" if open_modules else "nvidia-kernel-dkms"
    for wanted in (kmod, "nvidia-smi", "libcuda1", "nvidia-persistenced", "dkms"):
        assert wanted in installs, res.stdout[-3000:]
    assert "Inst %s (535." % kmod in res.stdout
    # Compute only: no X server pulled in.
    assert "xserver-xorg-video-nvidia" not in installs and "xserver-xorg-core" not in installs
