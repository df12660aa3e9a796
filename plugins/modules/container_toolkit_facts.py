#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: container_toolkit_facts
short_description: Read the Docker engine, NVIDIA Container Toolkit, daemon.json and CDI state of a host
version_added: 0.2.0
description:
  - Returns C(gpufleet_container_host) - the Docker engine binary, C(nvidia-ctk), the toolkit packages
    installed and held, the text of C(daemon.json) and of the CDI spec, and whether a GPU device node exists.
  - Never changes the host. The decisions are made by the C(gpufleet.serving.toolkit_plan) filter.
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.serving.read_only_facts
attributes:
  facts:
    support: full
    description: Returns C(ansible_facts.gpufleet_container_host).
options:
  daemon_json:
    description: Docker's daemon configuration file.
    type: path
    default: /etc/docker/daemon.json
  cdi_spec:
    description: The NVIDIA CDI spec file.
    type: path
    default: /etc/cdi/nvidia.yaml
"""

EXAMPLES = r"""
- name: Read the container runtime state
  gpufleet.serving.container_toolkit_facts:
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    gpufleet_container_host:
      description: Container runtime state of the host (docs/driver_toolkit.md).
      returned: always
      type: dict
      sample:
        dockerd: /usr/sbin/dockerd
        nvidia_ctk: /usr/bin/nvidia-ctk
        package_manager: apt
        packages: {nvidia-container-toolkit: 1.17.8-1, nvidia-container-toolkit-base: 1.17.8-1}
        held: [nvidia-container-toolkit]
        daemon_json: '{"log-driver": "json-file"}'
        cdi_spec: null
        device_nodes: true
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import driver_host
from ansible_collections.gpufleet.serving.plugins.module_utils.container_toolkit import TOOLKIT_PACKAGES


def read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def main():
    module = AnsibleModule(
        argument_spec=dict(daemon_json=dict(type="path", default="/etc/docker/daemon.json"),
                           cdi_spec=dict(type="path", default="/etc/cdi/nvidia.yaml")),
        supports_check_mode=True,
    )

    def run(*argv):
        rc, out, err = module.run_command(list(argv), environ_update={"LC_ALL": "C"})
        return out if rc == 0 else None

    manager, packages, held = driver_host.installed_packages(module.get_bin_path, run, read,
                                                             keep=lambda name: name in TOOLKIT_PACKAGES)
    facts = {
        "dockerd": module.get_bin_path("dockerd", opt_dirs=["/usr/sbin", "/usr/bin"]),
        "nvidia_ctk": module.get_bin_path("nvidia-ctk"),
        "package_manager": manager,
        "packages": packages,
        "held": held,
        "daemon_json": read(module.params["daemon_json"]),
        "cdi_spec": read(module.params["cdi_spec"]),
        # A simulated GPU (the lab) has an nvidia-smi but no device node to give a container.
        "device_nodes": os.path.exists("/dev/nvidiactl"),
    }
    module.exit_json(changed=False, ansible_facts={"gpufleet_container_host": facts})


if __name__ == "__main__":
    main()
