# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Which NVIDIA driver a host needs, and whether the loaded one is it (pure: facts + table in).

The knowledge table's per-architecture `driver` entry says the minimum and default branch and
whether the open kernel modules are required (Blackwell) or merely allowed.
"""
from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils.knowledge import (
    arch_key, driver_branch, load_knowledge)


class DriverPolicyError(ValueError):
    """The wanted driver cannot work on this host's GPUs (bad input, not a host problem)."""


def wanted_driver(gpu_facts, branch=None, knowledge=None, host=None):
    """The branch to run and whether open modules are required, checked against the GPU's needs."""
    kn = knowledge or load_knowledge()
    where = "host %s" % host if host else "this host"
    cc = gpu_facts.get("compute_capability")
    arch = kn["archs"].get(arch_key(kn, cc)) if cc else None
    if arch is None or not arch.get("supported", False):
        reason = arch.get("reason", "") if arch else "compute capability %s is not in the knowledge table" % cc
        raise DriverPolicyError("%s: GPU %s is not supported: %s" % (where, cc, reason))
    policy = arch["driver"]
    wanted = str(branch) if branch else policy["default_branch"]
    if wanted not in kn["driver_branches"]:
        raise DriverPolicyError("%s: nvidia_driver_branch=%s is not a known branch; use one of %s"
                                % (where, wanted, ", ".join(sorted(kn["driver_branches"]))))
    if int(wanted) < int(policy["min_branch"]):
        raise DriverPolicyError("%s: nvidia_driver_branch=%s is below %s, the minimum for %s GPUs (CC %s); "
                                "set nvidia_driver_branch to %s or newer"
                                % (where, wanted, policy["min_branch"], arch["architecture"], cc, policy["min_branch"]))
    return {"branch": wanted, "min_branch": policy["min_branch"],
            "open_kernel_module": policy["open_kernel_module"], "architecture": arch["architecture"]}


def check_driver(gpu_facts, branch=None, knowledge=None, host=None):
    """{ok, reason, wanted_branch, loaded_branch, open_required} for the loaded driver."""
    state = gpu_facts.get("state")
    if state != "healthy":
        fix = {"driver_not_loaded": "reboot the host (or load the nvidia module) so the installed driver loads",
               "no_driver": "install the NVIDIA driver",
               "no_gpu": "check that the GPU is seated and visible (lspci)"}.get(state, "check nvidia-smi")
        return {"ok": False, "reason": "%s: %s" % (gpu_facts.get("message") or state, fix),
                "wanted_branch": None, "loaded_branch": None, "open_required": None}
    want = wanted_driver(gpu_facts, branch, knowledge, host)
    loaded = driver_branch(gpu_facts["driver_version"])
    result = {"ok": True, "reason": "", "wanted_branch": want["branch"], "loaded_branch": loaded,
              "open_required": want["open_kernel_module"] == "required"}
    if int(loaded) < int(want["branch"]):
        result.update(ok=False, reason="driver %s (branch %s) is loaded; this host needs branch %s or newer"
                      % (gpu_facts["driver_version"], loaded, want["branch"]))
    elif result["open_required"] and gpu_facts.get("kernel_module") == "proprietary":
        result.update(ok=False, reason="%s GPUs need the open kernel modules, but the proprietary module is "
                      "loaded: install the -open driver packages" % want["architecture"])
    return result
