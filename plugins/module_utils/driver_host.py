# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Read the driver-related state of a host from the texts the system gives (pure parsers).

The nvidia_driver_facts module feeds them the output of dpkg-query/rpm, /proc and /sys files and
modinfo/mokutil; the tests feed them captured or hand-written texts (real H100 host, lab hosts).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.gpufleet.serving.plugins.module_utils.driver_packages import is_managed

PCI_VENDOR_NVIDIA = "0x10de"
# PCI classes: 0x0300 VGA and 0x0302 3D controller are GPUs; NVSwitches show as 0x0680 (other bridge).
_GPU_CLASSES = ("0x0300", "0x0302")
_NVSWITCH_CLASS = "0x0680"
_VERSION = re.compile(r"\b(\d{3}\.\d+(?:\.\d+)?)\b")


def parse_dpkg(text, keep=is_managed):
    """dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n' -> (packages, held).

    Only installed packages that keep() accepts (default: driver packages); held: those whose
    selection is "hold".
    """
    packages, held = {}, []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not keep(parts[0]):
            continue
        name, version, status = parts[0], parts[1], parts[2]
        if len(status) >= 2 and status[1] in "iHUWtF":  # unpacked or further: files are on disk
            packages[name] = version
            if status[0] == "h":
                held.append(name)
    return packages, sorted(held)


def parse_rpm(text, keep=is_managed):
    """rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\n' -> packages keep() accepts (default: driver ones)."""
    packages = {}
    for line in text.splitlines():
        name, _tab, version = line.partition("\t")
        if version and keep(name):
            packages[name] = version
    return packages


def parse_versionlock(text):
    """Package names in /etc/dnf/plugins/versionlock.list (lines NAME-[EPOCH:]VERSION-RELEASE.*)."""
    names = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^!?(.+?)-(?:\d+:)?[^-]+-[^-]+$", line)
        if match:
            names.append(match.group(1))
    return sorted(names)


def parse_proc_version(text):
    """/proc/driver/nvidia/version -> {version, open}; None when it names no driver."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _VERSION.search(first)
    if not first.startswith("NVRM version:") or not match:
        return None
    return {"version": match.group(1), "open": "Open Kernel Module" in first}


def parse_modinfo(text):
    """modinfo -k KERNEL nvidia -> {version, open, signed} of the module the next boot loads."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if "version" not in fields:
        return None
    # The open module is licensed "Dual MIT/GPL", the proprietary one "NVIDIA".
    return {"version": fields["version"], "open": "GPL" in fields.get("license", ""),
            "signed": bool(fields.get("signer") or fields.get("sig_key"))}


def parse_secure_boot(mokutil_text=None, efivar=None):
    """True/False from `mokutil --sb-state` or the SecureBoot EFI variable; False without EFI.

    efivar: the raw bytes of /sys/firmware/efi/efivars/SecureBoot-<guid> (4 attribute bytes, then
    the value byte), or None when the file does not exist.
    """
    if mokutil_text:
        if "SecureBoot enabled" in mokutil_text:
            return True
        if "SecureBoot disabled" in mokutil_text or "not supported" in mokutil_text:
            return False
    if efivar is not None:
        return len(efivar) >= 5 and efivar[4] == 1
    return False


def parse_mok_test_key(text):
    """`mokutil --test-key CERT`: True when the certificate is enrolled, False when not, None otherwise."""
    if "is already enrolled" in text:
        return True
    if "is not enrolled" in text:
        return False
    return None


def scan_pci(devices):
    """devices: [(vendor, device, class)] as in /sys/bus/pci/devices/*/{vendor,device,class}.

    -> {"gpus": [device ids], "nvswitch": bool}
    """
    gpus, nvswitch = [], False
    for vendor, device, klass in devices:
        if vendor.strip().lower() != PCI_VENDOR_NVIDIA:
            continue
        klass = klass.strip().lower()[:6]
        if klass in _GPU_CLASSES:
            gpus.append(device.strip().lower())
        elif klass == _NVSWITCH_CLASS:
            nvswitch = True
    return {"gpus": sorted(gpus), "nvswitch": nvswitch}


def parse_modules(text):
    """Names of the loaded modules from /proc/modules."""
    return sorted(line.split()[0] for line in text.splitlines() if line.strip())


def loaded_driver(proc_version_text=None, sys_module_version=None):
    """The driver the running kernel has loaded: {version, open} (open None when unknown), or None."""
    if proc_version_text:
        parsed = parse_proc_version(proc_version_text)
        if parsed:
            return parsed
    if sys_module_version and sys_module_version.strip():
        return {"version": sys_module_version.strip(), "open": None}
    return None


def installed_packages(which, run, read, keep=is_managed):
    """(package manager, {name: version}, held names) of the packages keep() accepts.

    which(name) -> path or None; run(*argv) -> output or None; read(path) -> text or None (the
    facts modules pass AnsibleModule-backed ones).
    """
    if which("dpkg-query"):
        packages, held = parse_dpkg(run("dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n")
                                    or "", keep)
        return "apt", packages, held
    if which("rpm"):
        packages = parse_rpm(run("rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\n") or "", keep)
        held = [n for n in parse_versionlock(read("/etc/dnf/plugins/versionlock.list") or "") if n in packages]
        return "dnf", packages, held
    return None, {}, []
