#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: nvidia_driver_facts
short_description: Read what the NVIDIA driver role decides from (packages, loaded module, Secure Boot, PCI)
version_added: 0.2.0
description:
  - Returns C(gpufleet_driver_host) - the NVIDIA driver packages installed and held, the driver the
    kernel has loaded, the module the next boot would load for the running kernel (C(modinfo)),
    nouveau, Secure Boot and MOK enrolment, NVIDIA GPUs and NVSwitches on the PCI bus, a runfile
    install, the initramfs tool and other files that already configure NVIDIA's repository.
  - Never changes the host. The decisions are made by the C(gpufleet.serving.driver_plan) filter.
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.serving.read_only_facts
attributes:
  facts:
    support: full
    description: Returns C(ansible_facts.gpufleet_driver_host).
options:
  mok_certificate:
    description: Certificate (DER) whose enrolment in the MOK list is tested with C(mokutil --test-key).
    type: path
  repo_url:
    description: URL of NVIDIA's repository; files under C(/etc/apt/sources.list.d) or C(/etc/yum.repos.d)
      other than the role's own that mention it (a prefix is enough) are listed in C(ansible_facts.gpufleet_driver_host.repo_files).
    type: str
  own_repo_files:
    description: The role's own repository files, left out of C(ansible_facts.gpufleet_driver_host.repo_files).
    type: list
    elements: path
    default: []
"""

EXAMPLES = r"""
- name: Read the driver state of the host
  gpufleet.serving.nvidia_driver_facts:
    repo_url: https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    gpufleet_driver_host:
      description: Driver state of the host (docs/driver_toolkit.md).
      returned: always
      type: dict
      sample:
        kernel: 6.8.0-45-generic
        package_manager: apt
        packages: {libnvidia-compute-580: 580.95.05-0ubuntu1, nvidia-driver-580-open: 580.95.05-0ubuntu1}
        held: [nvidia-driver-580-open]
        loaded: {version: 580.95.05, open: true}
        module: {version: 580.95.05, open: true, signed: false}
        nouveau_loaded: false
        secure_boot: false
        mok_enrolled: null
        pci: {gpus: ["0x2330"], nvswitch: false}
        runfile: false
        initramfs_tools: [update-initramfs]
        repo_files: []
"""

import glob
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import driver_host

SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
PCI_DEVICES = "/sys/bus/pci/devices"
# nvidia-uninstall is what NVIDIA's .run installer leaves behind.
RUNFILE_MARKER = "/usr/bin/nvidia-uninstall"


def read(path, mode="r"):
    try:
        with open(path, mode) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def pci_devices():
    devices = []
    for path in sorted(glob.glob(os.path.join(PCI_DEVICES, "*"))):
        values = [read(os.path.join(path, name)) for name in ("vendor", "device", "class")]
        if None not in values:
            devices.append(tuple(values))
    return devices


def repo_files(url, own):
    """Files other than the role's own that already configure NVIDIA's repository (cuda-keyring, by hand)."""
    if not url:
        return []
    found = []
    for path in sorted(glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*")
                       + glob.glob("/etc/yum.repos.d/*.repo")):
        text = read(path)
        if path not in own and text and url.rstrip("/") in text:
            found.append(path)
    return found


def main():
    module = AnsibleModule(
        argument_spec=dict(mok_certificate=dict(type="path"), repo_url=dict(type="str"),
                           own_repo_files=dict(type="list", elements="path", default=[])),
        supports_check_mode=True,
    )

    def run(*argv):
        path = module.get_bin_path(argv[0], opt_dirs=["/usr/sbin", "/sbin"])
        if not path:
            return None
        rc, out, err = module.run_command([path] + list(argv[1:]), environ_update={"LC_ALL": "C"})
        return out + err if rc == 0 or out else None

    kernel = os.uname()[2]
    manager, packages, held = driver_host.installed_packages(module.get_bin_path, run, read)
    modinfo = run("modinfo", "-k", kernel, "nvidia")
    mok = module.params["mok_certificate"]
    mok_enrolled = None
    if mok and os.path.exists(mok):
        mok_enrolled = driver_host.parse_mok_test_key(run("mokutil", "--test-key", mok) or "")
    modules = driver_host.parse_modules(read("/proc/modules") or "")
    facts = {
        "kernel": kernel,
        "package_manager": manager,
        "packages": packages,
        "held": held,
        "loaded": driver_host.loaded_driver(read("/proc/driver/nvidia/version"), read("/sys/module/nvidia/version")),
        "module": driver_host.parse_modinfo(modinfo) if modinfo else None,
        "nouveau_loaded": "nouveau" in modules,
        "secure_boot": driver_host.parse_secure_boot(run("mokutil", "--sb-state"), read(SECURE_BOOT_VAR, "rb")),
        "mok_enrolled": mok_enrolled,
        "pci": driver_host.scan_pci(pci_devices()),
        "runfile": os.path.exists(RUNFILE_MARKER),
        "initramfs_tools": [t for t in ("update-initramfs", "dracut") if module.get_bin_path(t, opt_dirs=["/usr/sbin", "/sbin"])],
        "repo_files": repo_files(module.params["repo_url"], module.params["own_repo_files"]),
    }
    module.exit_json(changed=False, ansible_facts={"gpufleet_driver_host": facts})


if __name__ == "__main__":
    main()
