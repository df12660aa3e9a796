# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Which NVIDIA driver a host needs, and whether the loaded one is it (pure: facts + table in).

The knowledge table's per-architecture `driver` entry says the minimum and default branch and
whether the open kernel modules are required (Blackwell) or merely allowed.
"""
from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import (
    arch_key, driver_branch, load_knowledge, version_tuple)


class DriverPolicyError(ValueError):
    """The wanted driver cannot work on this host's GPUs (bad input, not a host problem)."""


KERNEL_MODULES = ("auto", "open", "proprietary")


def arch_for_pci(knowledge, device_ids):
    """The table CC whose driver.pci_device_ids cover the lowest-CC NVIDIA GPU found on the PCI bus.

    device_ids: PCI device ids such as "0x2330". None when no id is known to the table: the
    caller then needs nvidia_driver_gpu_architecture.
    """
    found = []
    for device in device_ids:
        value = int(device, 16)
        for cc, arch in knowledge["archs"].items():
            for span in (arch.get("driver") or {}).get("pci_device_ids", []):
                low, high = (int(x, 16) for x in span.split("-"))
                if low <= value <= high:
                    found.append(cc)
    return min(found, key=version_tuple) if found else None


def _arch_entry(kn, gpu_facts, architecture):
    """(cc, entry) from the GPU's compute capability, else from an architecture name."""
    cc = gpu_facts.get("compute_capability")
    if cc:
        key = arch_key(kn, cc)
        return cc, kn["archs"].get(key) if key else None
    if architecture:
        keys = sorted((k for k, a in kn["archs"].items() if a["architecture"] == architecture), key=version_tuple)
        return (keys[0], kn["archs"][keys[0]]) if keys else (None, None)
    return None, None


def wanted_driver(gpu_facts, branch=None, knowledge=None, host=None, kernel_module=None, architecture=None):
    """The branch to run and which kernel module flavour, checked against the GPU's needs.

    The GPU is known from its facts (compute capability) or, on a host with no driver yet, from an
    architecture name (the PCI scan or nvidia_driver_gpu_architecture). kernel_module: auto (open
    where the GPU allows it: Turing and newer, the default since R560), open or proprietary.
    """
    kn = knowledge or load_knowledge()
    where = "host %s" % host if host else "this host"
    cc, arch = _arch_entry(kn, gpu_facts, architecture)
    if arch is None:
        what = ("compute capability %s is not in the knowledge table" % cc if cc else
                "architecture %r is not in the knowledge table" % architecture if architecture else
                "the GPU is unknown (no driver to ask and no architecture given)")
        raise DriverPolicyError("%s: GPU %s is not supported: %s" % (where, cc or architecture, what))
    policy = arch.get("driver") or {}
    module = kernel_module or "auto"
    if module not in KERNEL_MODULES:
        raise DriverPolicyError("%s: nvidia_driver_kernel_module=%s; use one of %s" % (where, module, ", ".join(KERNEL_MODULES)))
    # Checked before "supported": asking for open modules on a pre-Turing GPU is its own input error.
    if module == "open" and policy.get("open_kernel_module") == "unsupported":
        raise DriverPolicyError("%s: nvidia_driver_kernel_module=open, but the open kernel modules need Turing "
                                "(CC 7.5) or newer and this GPU is %s (CC %s); set nvidia_driver_kernel_module "
                                "to proprietary" % (where, arch["architecture"], cc))
    if not arch.get("supported", False):
        raise DriverPolicyError("%s: GPU %s is not supported: %s" % (where, cc, arch.get("reason", "")))
    if module == "proprietary" and policy["open_kernel_module"] == "required":
        raise DriverPolicyError("%s: nvidia_driver_kernel_module=proprietary, but %s GPUs need the open kernel "
                                "modules; set nvidia_driver_kernel_module to open (or auto)"
                                % (where, arch["architecture"]))
    wanted = str(branch) if branch else policy["default_branch"]
    if wanted not in kn["driver_branches"]:
        raise DriverPolicyError("%s: nvidia_driver_branch=%s is not a known branch; use one of %s"
                                % (where, wanted, ", ".join(sorted(kn["driver_branches"]))))
    if int(wanted) < int(policy["min_branch"]):
        raise DriverPolicyError("%s: nvidia_driver_branch=%s is below %s, the minimum for %s GPUs (CC %s); "
                                "set nvidia_driver_branch to %s or newer"
                                % (where, wanted, policy["min_branch"], arch["architecture"], cc, policy["min_branch"]))
    return {"branch": wanted, "min_branch": policy["min_branch"],
            "open_kernel_module": policy["open_kernel_module"], "architecture": arch["architecture"],
            "open": module == "open" or (module == "auto" and policy["open_kernel_module"] in ("required", "allowed"))}


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
