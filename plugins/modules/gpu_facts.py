#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Gather NVIDIA GPU, driver and CUDA facts with nvidia-smi
version_added: 0.1.0
description:
  - Reads the host's NVIDIA GPUs, driver version, supported CUDA version, compute capability,
    NVLink presence and kernel module flavour, and returns them as the C(gpufleet_gpu) fact.
  - Uses one C(nvidia-smi --query-gpu) call and one C(nvidia-smi --version) call (the full
    C(nvidia-smi) table only on drivers without C(--version)); C(nvidia-smi topo -m) only on hosts
    with more than one GPU.
  - On GPUs that support MIG (C(mig.mode.current) not N/A) one more C(--query-gpu) call reads the
    pending MIG mode; with MIG enabled, C(nvidia-smi -L) and C(nvidia-smi) give the MIG devices (UUID,
    profile, GPU/compute instance ids, memory, SMs), and C(nvidia-smi mig -lgi) is read for an enabled GPU
    that has no MIG device. A MIG mode change waiting for a GPU reset is reported (and warned about).
  - A host without driver, with the driver not loaded, or without GPUs is not an error unless
    O(required=true); its state is reported in RV(ansible_facts.gpufleet_gpu.state).
  - Never changes the host.
author:
  - gpufleet maintainers (@gpufleet)
extends_documentation_fragment:
  - gpufleet.serving.read_only_facts
attributes:
  facts:
    support: full
    description: Returns C(ansible_facts.gpufleet_gpu).
options:
  nvidia_smi_path:
    description:
      - Path of the C(nvidia-smi) binary.
      - When unset, C(nvidia-smi) is searched on E(PATH), then C(/usr/bin/nvidia-smi).
      - A path that does not exist means state V(no_driver).
    type: path
  required:
    description:
      - Fail when the state is anything but V(healthy) (no driver, driver not loaded, no GPU).
      - The facts are still returned with the failure.
    type: bool
    default: false
  timeout:
    description:
      - Seconds each C(nvidia-smi) call may take; a hung call (for example a GPU fallen off the bus)
        fails the task.
    type: int
    default: 30
notes:
  - Output that does not parse (a changed nvidia-smi format) and nvidia-smi failures other than the
    three known states fail the task with a message naming what was wrong.
"""

EXAMPLES = r"""
- name: Read the GPUs of every host
  gpufleet.serving.gpu_facts:

- name: Fail hosts that cannot serve (no driver, driver not loaded, no GPU)
  gpufleet.serving.gpu_facts:
    required: true

- name: Use a driver installed outside PATH
  gpufleet.serving.gpu_facts:
    nvidia_smi_path: /usr/local/nvidia/bin/nvidia-smi

- name: Show what was found
  ansible.builtin.debug:
    msg: >-
      {{ gpufleet_gpu.count }} x {{ gpufleet_gpu.gpus[0].name | default('none') }},
      {{ gpufleet_gpu.architecture }}, CUDA {{ gpufleet_gpu.cuda_version }}
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    gpufleet_gpu:
      description: The host's GPUs; the shape is fixed by docs/CONTRACTS.md.
      returned: always
      type: dict
      contains:
        state:
          description: V(healthy), V(no_driver), V(driver_not_loaded) or V(no_gpu).
          type: str
          sample: healthy
        message:
          description: What nvidia-smi said for a non-healthy state; a one-line summary when healthy.
          type: str
          sample: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. ..."
        nvidia_smi_path:
          description: The nvidia-smi used; V(null) when none was found.
          type: str
          sample: /usr/bin/nvidia-smi
        driver_version:
          description: NVIDIA driver version; V(null) unless healthy.
          type: str
          sample: "580.159.04"
        cuda_version:
          description: Highest CUDA version the driver supports; V(null) unless healthy or when the driver reports none.
          type: str
          sample: "13.0"
        count:
          description: Number of GPUs.
          type: int
          sample: 1
        gpus:
          description: One entry per GPU, in nvidia-smi index order.
          type: list
          elements: dict
          sample:
            - index: 0
              uuid: GPU-9e69fcbc-962a-e3ab-6d85-0e453726a4e8
              name: NVIDIA H100 80GB HBM3
              memory_mib: 81559
              compute_capability: "9.0"
              pci_bus_id: "00000000:00:06.0"
              mig_mode: Disabled
              mig_mode_pending: Disabled
        compute_capability:
          description: The lowest compute capability over all GPUs; V(null) without GPUs.
          type: str
          sample: "9.0"
        architecture:
          description: >-
            Family of that compute capability: V(volta), V(turing), V(ampere), V(ada), V(hopper),
            V(blackwell), or V(unknown) for one this module predates.
          type: str
          sample: hopper
        memory_total_mib:
          description: Sum of all GPUs' memory in MiB, as nvidia-smi reports it.
          type: int
          sample: 81559
        memory_min_mib:
          description: Memory of the smallest GPU in MiB.
          type: int
          sample: 81559
        homogeneous:
          description: All GPUs share name, memory and compute capability; V(null) without GPUs.
          type: bool
          sample: true
        nvlink:
          description: Any GPU pair is linked by NVLink (C(NV#) in C(nvidia-smi topo -m)).
          type: bool
          sample: false
        kernel_module:
          description: V(open) or V(proprietary) from /proc/driver/nvidia/version; V(null) when it is not readable.
          type: str
          sample: open
        mig_devices:
          description:
            - The MIG devices of the GPUs in MIG mode, in C(nvidia-smi -L) order; each is one engine
              (C(engine_instances[].mig) names it by C(index) or C(uuid)). Empty when MIG is enabled but no
              instance was created.
            - C(gi)/C(ci) are the GPU/compute instance ids, C(sm_count) and C(memory_mib) what the device has,
              C(compute_slices) the C(Ng) (or C(Nc)) of the profile.
          returned: when a GPU supports MIG
          type: list
          elements: dict
          sample:
            - {index: 0, gpu: 0, device: 0, uuid: MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde,
               gpu_uuid: GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4, profile: 3g.40gb,
               name: NVIDIA H100 80GB HBM3 MIG 3g.40gb, gi: 2, ci: 0, memory_mib: 40320, sm_count: 60,
               compute_slices: 3}
        mig_pending:
          description: GPUs whose MIG mode changes at the next GPU reset or reboot.
          returned: when a GPU supports MIG
          type: list
          elements: dict
          sample: [{gpu: 0, current: Disabled, pending: Enabled}]
        mig_gpu_instances:
          description: C(nvidia-smi mig -lgi) rows, read only for a GPU in MIG mode without MIG devices.
          returned: when read
          type: list
          elements: dict
          sample: [{gpu: 0, gi: 2, profile: 3g.40gb, profile_id: 9, placement: "4:4"}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils.gpu_probe import (
    ARGUMENT_SPEC,
    fail_unless_healthy,
    read_gpu_facts,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(ARGUMENT_SPEC, required=dict(type="bool", default=False)),
        supports_check_mode=True,
    )
    facts = read_gpu_facts(module, module.params["nvidia_smi_path"], module.params["timeout"])
    if module.params["required"]:
        fail_unless_healthy(module, facts)
    module.exit_json(changed=False, ansible_facts={"gpufleet_gpu": facts})


if __name__ == "__main__":
    main()
