# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""What the nvidia_driver role does on one host, decided from facts (pure).

Three steps, each a function the role calls through a filter:
- plan_driver: before any change. Bad input (unknown branch, open modules on a pre-Turing GPU,
  Blackwell below 570, unsupported OS, no package set) raises; host states the role must not
  change (a driver it did not install and that is wrong, Secure Boot without a MOK) become
  blockers. action: none (already right: no package transaction, no reboot), install or change.
- activation: after the package transaction. Is the driver the next boot loads the wanted one
  (never reboot into a module that was not built or signed), what to hold, reboot or not.
- verify_loaded: after the reboot. Is the loaded driver the installed, wanted one.

Inputs: the host facts of gpufleet.serving.nvidia_driver_facts, the gpufleet_gpu facts, Ansible's
OS facts and the role's settings (docs/driver_toolkit.md).
"""
from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.module_utils import driver_packages as pkgs
from ansible_collections.gpufleet.serving.plugins.plugin_utils.driver_policy import (
    DriverPolicyError, arch_for_pci, wanted_driver)
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import load_knowledge

REBOOT_MODES = ("auto", "never", "always")
FABRIC_MANAGER = ("auto", "present", "absent")


def _where(hostname):
    return "host %s" % hostname if hostname else "this host"


def _flavour(open_modules):
    return {True: "open", False: "proprietary", None: "unknown"}[open_modules]


def _describe(driver):
    return "%s (%s kernel module)" % (driver["version"], _flavour(driver.get("open")))


def matches(driver, want):
    """A driver (installed or loaded) is the wanted one: same branch (same version when one is
    pinned) and same kernel module flavour where the flavour is known."""
    if driver is None:
        return False
    if want["version"]:
        same = driver["version"] == want["version"]
    else:
        same = driver["version"].split(".")[0] == want["branch"]
    return same and (driver.get("open") is None or driver["open"] == want["open"])


def _loaded(host, gpu_facts):
    """The loaded driver: the kernel's own word first, nvidia-smi's otherwise."""
    if host.get("loaded"):
        return host["loaded"]
    if gpu_facts.get("state") == "healthy" and gpu_facts.get("driver_version"):
        module = gpu_facts.get("kernel_module")
        return {"version": gpu_facts["driver_version"], "open": None if module is None else module == "open"}
    return None


def _architecture(host, gpu_facts, settings, kn, where):
    if gpu_facts.get("state") == "healthy":
        return None  # the compute capability from nvidia-smi decides
    if settings.get("architecture") not in (None, "detect"):
        return settings["architecture"]
    cc = arch_for_pci(kn, host.get("pci", {}).get("gpus", []))
    if cc is None:
        raise DriverPolicyError(
            "%s: no driver to ask which GPU this is, and the PCI bus shows %s; set "
            "nvidia_driver_gpu_architecture (turing, ampere, ada, hopper, blackwell)"
            % (where, "NVIDIA device(s) %s the knowledge table does not know" % ", ".join(host["pci"]["gpus"])
               if host.get("pci", {}).get("gpus") else "no NVIDIA GPU"))
    return kn["archs"][cc]["architecture"]


def _fabric_manager_ok(host, installed, wanted):
    """Fabric Manager refuses to start unless it is at exactly the driver's version."""
    return not wanted or pkgs.fabric_manager_version(host.get("packages", {})) == installed["version"]


def _secure_boot_blocker(host, settings, where):
    if not host.get("secure_boot") or settings.get("mok"):
        return None
    return ("%s: Secure Boot is on, and DKMS-built NVIDIA modules load only when signed with a key the "
            "firmware trusts. Nothing was changed. Either: (1) give the role a Machine Owner Key: "
            "set nvidia_driver_mok_key_src and nvidia_driver_mok_cert_src (a DER certificate), then on "
            "the host `mokutil --import <cert>`, reboot, confirm the enrolment in MokManager and run the "
            "role again; or (2) turn Secure Boot off in the firmware." % where)


def plan_driver(host, gpu_facts, os_facts, settings, knowledge=None, hostname=None):
    """The install plan; raises DriverPolicyError / DriverPackageError on bad input."""
    kn = knowledge or load_knowledge()
    where = _where(hostname)
    platform = pkgs.platform_of(os_facts)
    manager = pkgs.PLATFORMS[platform]["manager"]
    gpu = gpu_facts if gpu_facts.get("state") == "healthy" else {}
    want = wanted_driver(gpu, branch=settings.get("branch"), knowledge=kn, host=hostname,
                         kernel_module=settings.get("kernel_module"),
                         architecture=_architecture(host, gpu_facts, settings, kn, where))
    version = settings.get("version")
    if version and version.split(".")[0] != want["branch"]:
        raise DriverPolicyError("%s: nvidia_driver_version=%s is not on branch %s; set both to the same branch"
                                % (where, version, want["branch"]))
    source = settings.get("source") or "cuda"
    want = {"branch": want["branch"], "version": version, "open": want["open"], "architecture": want["architecture"]}
    install = pkgs.driver_packages(platform, source, want["branch"], want["open"],
                                   server=settings.get("server_flavour", True), version=version)
    fabric = settings.get("fabric_manager") or "auto"
    if fabric not in FABRIC_MANAGER:
        raise DriverPolicyError("%s: nvidia_driver_fabric_manager=%s; use one of %s" % (where, fabric, ", ".join(FABRIC_MANAGER)))
    fabric_manager = fabric == "present" or (fabric == "auto" and host.get("pci", {}).get("nvswitch", False))
    if fabric_manager and pkgs.PLATFORMS[platform]["distro"] == "debian" and source == "distro":
        raise pkgs.DriverPackageError("%s: this host needs Fabric Manager (NVSwitch), which Debian's archive does "
                                      "not have; set nvidia_driver_source=cuda" % where)
    if fabric_manager:
        install += pkgs.fabric_manager_packages(platform, want["branch"], version)

    installed = pkgs.installed_driver(host.get("packages", {}))
    loaded = _loaded(host, gpu_facts)
    foreign = host.get("runfile") or (installed is None and loaded is not None)
    blockers, notes = [], []
    if foreign:
        # A runfile install, or a driver the container runtime mounts from the machine below: no
        # package of ours owns it, and packages installed over it would fight over the same files.
        manage = False
        if matches(loaded, want):
            action = "none"
            notes.append("driver %s is loaded and is the wanted one, but was not installed from packages "
                         "(%s): left untouched" % (_describe(loaded), "runfile installer" if host.get("runfile")
                                                   else "no driver package on this host"))
        else:
            action = "none"
            blockers.append(
                "%s: the loaded driver %s is not the wanted branch %s (%s modules) and was not installed from "
                "packages (%s). The role never installs packages over a driver it does not manage. Nothing "
                "was changed. Remove that driver first (runfile: `nvidia-uninstall`; a driver mounted from "
                "the machine below a container: upgrade it there), or set nvidia_driver_mode=verify."
                % (where, _describe(loaded) if loaded else "(none loaded)", want["branch"], _flavour(want["open"]),
                   "runfile installer" if host.get("runfile") else "no driver package on this host"))
    else:
        manage = True
        if matches(installed, want) and _fabric_manager_ok(host, installed, fabric_manager):
            action = "none"
        else:
            action = "change" if installed else "install"
            if installed:
                notes.append("driver packages %s -> branch %s (%s modules)"
                             % (_describe(installed), want["version"] or want["branch"], _flavour(want["open"])))
            blocker = _secure_boot_blocker(host, settings, where)
            if blocker:
                blockers.append(blocker)

    repo = pkgs.repo_files(platform, source, os_facts.get("architecture", "x86_64"),
                           base=settings.get("repo_base"), key_url=settings.get("repo_key_url")) if manage else None
    if repo and host.get("repo_files"):
        notes.append("NVIDIA's repository is already configured in %s: kept, not added again"
                     % ", ".join(host["repo_files"]))
        repo = None
    return {
        "platform": platform,
        "manager": manager,
        "source": source,
        "want": want,
        "installed": installed,
        "loaded": loaded,
        "action": action,
        "manage": manage,
        "blockers": blockers,
        "notes": notes,
        "install": install if action != "none" else [],
        "kernel_packages": pkgs.kernel_packages(platform, host["kernel"]) if action != "none" else [],
        "unhold": sorted(host.get("held", [])) if action == "change" else [],
        "repo": repo,
        "pin": ({"path": "/etc/apt/preferences.d/gpufleet-nvidia-driver",
                 "content": pkgs.apt_pin(platform, want["branch"], version)}
                if manage and manager == "apt" and source == "cuda" else None),
        "unattended": ({"path": "/etc/apt/apt.conf.d/51gpufleet-nvidia-driver",
                        "content": pkgs.unattended_upgrades_config()} if manage and manager == "apt" else None),
        "blacklist": ({"path": "/etc/modprobe.d/gpufleet-blacklist-nouveau.conf",
                       "content": pkgs.nouveau_blacklist()} if manage else None),
        "initramfs_command": pkgs.initramfs_command(platform, host.get("initramfs_tools")),
        "fabric_manager": fabric_manager and manage,
        "mok": pkgs.mok_paths(platform) if host.get("secure_boot") and action != "none" else None,
        "services": (["nvidia-persistenced"] + (["nvidia-fabricmanager"] if fabric_manager else [])) if manage else [],
    }


def activation(plan, host, gpu_facts, changed, reboot_mode="auto", hostname=None):
    """After the package transaction: what the next boot loads, holds, reboot or not.

    changed: whether this run changed driver packages, the nouveau blacklist or the initramfs.
    Returns {ok, reason, reboot, pending, hold, installed}.
    """
    where = _where(hostname)
    if reboot_mode not in REBOOT_MODES:
        raise DriverPolicyError("%s: nvidia_driver_reboot=%s; use one of %s" % (where, reboot_mode, ", ".join(REBOOT_MODES)))
    want = plan["want"]
    installed = pkgs.installed_driver(host.get("packages", {}))
    result = {"ok": True, "reason": "", "reboot": False, "pending": False, "hold": [], "installed": installed}
    if not matches(installed, want):
        result.update(ok=False, reason="%s: after the install the driver packages are %s, not branch %s (%s "
                      "modules); check the repository and `apt-cache policy`/`dnf list` for the driver packages"
                      % (where, _describe(installed) if installed else "absent", want["version"] or want["branch"],
                         _flavour(want["open"])))
        return result
    if not _fabric_manager_ok(host, installed, plan["fabric_manager"]):
        result.update(ok=False, reason="%s: Fabric Manager is at %s but the driver at %s; it only starts at the "
                      "driver's exact version: the repository lacks that Fabric Manager build, set "
                      "nvidia_driver_version to a version it has" % (
                          where, pkgs.fabric_manager_version(host["packages"]) or "(not installed)",
                          installed["version"]))
        return result
    result["hold"] = [n for n in pkgs.hold_list(host["packages"], want["branch"]) if n not in host.get("held", [])]
    loaded = _loaded(host, gpu_facts)
    needs = (not matches(loaded, want) or loaded["version"] != installed["version"]
             or bool(host.get("nouveau_loaded")))
    if not (needs or (reboot_mode == "always" and changed)):
        return result
    # Never reboot into a kernel that has no loadable module: it must be built for the running
    # kernel at the installed version, and signed when Secure Boot is on.
    module = host.get("module")
    if module is None or module["version"] != installed["version"]:
        result.update(ok=False, reason=(
            "%s: no nvidia module %s is built for the running kernel %s (modinfo finds %s), so a reboot would "
            "leave the host without a driver; not rebooting. Check the kernel headers (linux-headers/"
            "kernel-devel for %s) and the DKMS build log (`dkms status`, /var/lib/dkms/nvidia/%s/build/make.log)"
            % (where, installed["version"], host["kernel"], module["version"] if module else "none",
               host["kernel"], installed["version"])))
        return result
    if host.get("secure_boot") and not module.get("signed"):
        result.update(ok=False, reason="%s: Secure Boot is on but the built nvidia module is not signed; not "
                      "rebooting. Check that DKMS signs with the MOK (/etc/dkms/framework.conf mok_signing_key)"
                      % where)
        return result
    if reboot_mode == "never":
        result["pending"] = True
        result["reason"] = ("%s: driver %s is installed but %s is loaded: reboot to load it (nvidia_driver_reboot"
                            "=never)" % (where, installed["version"], _describe(loaded) if loaded else "none"))
    else:
        result["reboot"] = True
        result["reason"] = ("driver %s installed, %s loaded%s" % (
            installed["version"], _describe(loaded) if loaded else "none",
            ", nouveau loaded" if host.get("nouveau_loaded") else ""))
    return result


def verify_loaded(plan, host, gpu_facts, hostname=None):
    """After the reboot: {ok, reason} - the loaded driver is the installed, wanted one."""
    where = _where(hostname)
    want = plan["want"]
    loaded = _loaded(host, gpu_facts)
    installed = pkgs.installed_driver(host.get("packages", {})) if plan["manage"] else loaded
    if gpu_facts.get("state") != "healthy":
        return {"ok": False, "reason": "%s: after the reboot nvidia-smi says %s: %s. Check `dmesg | grep -i nvrm`, "
                "`dkms status` and that nouveau is not loaded" % (where, gpu_facts.get("state"),
                                                                  gpu_facts.get("message"))}
    if not matches(loaded, want) or (installed and loaded["version"] != installed["version"]):
        return {"ok": False, "reason": "%s: driver %s is loaded, but %s is installed and branch %s (%s modules) is "
                "wanted" % (where, _describe(loaded), _describe(installed) if installed else "none",
                            want["version"] or want["branch"], _flavour(want["open"]))}
    return {"ok": True, "reason": "driver %s loaded" % _describe(loaded)}
