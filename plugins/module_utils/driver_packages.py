# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Per-OS decisions of the NVIDIA driver install: package names, repository files, pins, holds.

Pure functions of (platform, source, branch, kernel module flavour, ...): no host access, no
Ansible import, so every supported OS is unit-tested here (tests/unit/test_driver_packages.py).

Platforms: Ubuntu 22.04/24.04, Debian 12/13, RHEL 9 family. Sources:
- ``distro``: the distribution's own packages (Ubuntu restricted: ``nvidia-driver-<b>[-server][-open]``;
  Debian non-free/contrib: the compute-only set of the branch the release ships).
- ``cuda``: NVIDIA's CUDA repository (``developer.download.nvidia.com/compute/cuda/repos/<repo>/<arch>``),
  configured with a Signed-By key and an apt pin (or DNF module stream) that keeps the branch.
Package names follow NVIDIA's driver installation guide (R580) and the distributions' archives;
the Debian 12/13 ones were checked against deb.debian.org, Ubuntu/RHEL ones are from the guides.
"""
from __future__ import annotations

import re

SOURCES = ("cuda", "distro")
REPO_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"
# Signing keys of NVIDIA's CUDA repositories (file names under each repo URL).
REPO_KEY_FILE = {"apt": "3bf863cc.pub", "dnf": "D42D0685.pub"}
MANAGED_BY = "Managed by gpufleet.serving.nvidia_driver"

PLATFORMS = {
    "ubuntu2204": {"manager": "apt", "distro": "ubuntu", "name": "Ubuntu 22.04"},
    "ubuntu2404": {"manager": "apt", "distro": "ubuntu", "name": "Ubuntu 24.04"},
    "debian12": {"manager": "apt", "distro": "debian", "name": "Debian 12"},
    "debian13": {"manager": "apt", "distro": "debian", "name": "Debian 13"},
    "rhel9": {"manager": "dnf", "distro": "rhel", "name": "RHEL 9 family"},
}
_RHEL_LIKE = ("RedHat", "Rocky", "AlmaLinux", "OracleLinux", "CentOS")

# Debian's archive: which branch each release ships, under which names (checked with apt-cache on
# deb.debian.org). Debian 12's default nvidia-* packages are 535; Debian 13's default is 550 (no
# datacenter branch), its 535 is the nvidia-tesla-535-* set, which has no open kernel module.
DEBIAN_ARCHIVE = {
    "debian12": {"535": {"open": ["nvidia-open-kernel-dkms", "firmware-nvidia-gsp"],
                         "proprietary": ["nvidia-kernel-dkms"],
                         "common": ["nvidia-smi", "libcuda1"]}},
    "debian13": {"535": {"open": None,
                         "proprietary": ["nvidia-tesla-535-kernel-dkms"],
                         "common": ["nvidia-tesla-535-smi", "libnvidia-tesla-535-cuda1"]}},
}

# What an installed package says about the driver (names of every scheme above).
_DRIVER_LIB = re.compile(r"^(libcuda1|libnvidia-tesla-\d+-cuda1|libnvidia-compute-\d+(-server)?"
                         r"|nvidia-driver-cuda-libs)$")
_OPEN_KMOD = re.compile(r"^(nvidia-open-kernel-dkms|nvidia-kernel-open-dkms|nvidia-dkms-\d+(-server)?-open"
                        r"|kmod-nvidia-open-dkms)$")
_PROPRIETARY_KMOD = re.compile(r"^(nvidia-kernel-dkms|nvidia-tesla-\d+-kernel-dkms|nvidia-dkms-\d+(-server)?"
                               r"|kmod-nvidia-latest-dkms)$")
_FABRIC_MANAGER = re.compile(r"^nvidia-fabric-?manager(-\d+)?$")
# Driver packages the role holds and keeps away from unattended upgrades. The container toolkit is
# not one of them (its role pins it); neither are Debian's version-less helpers such as
# nvidia-kernel-common, which carry no driver version.
_MANAGED = re.compile(r"^(nvidia-|libnvidia-|libcuda1$|libnvcuvid|libnvoptix|xserver-xorg-video-nvidia"
                      r"|firmware-nvidia|cuda-drivers|kmod-nvidia)")
_NOT_DRIVER = re.compile(r"^(nvidia-container-|libnvidia-container|nvidia-docker)")
_PIN_PACKAGES = "nvidia-* libnvidia-* libcuda* libnvcuvid* libnvoptix* firmware-nvidia-* xserver-xorg-video-nvidia*"
# Prefixes kept out of unattended-upgrades (Unattended-Upgrade::Package-Blacklist takes regexes
# anchored at the start of the name). A hold already stops it; this also covers packages the
# driver gains in a later point release.
UNATTENDED_BLOCK = ["nvidia-", "libnvidia-", "libcuda", "libnvcuvid", "libnvoptix", "firmware-nvidia",
                    "xserver-xorg-video-nvidia", "cuda-drivers"]


class DriverPackageError(ValueError):
    """The wanted driver has no package set on this OS/source (bad input, found before any change)."""


def platform_of(os_facts):
    """Platform key from Ansible's OS facts, or DriverPackageError naming the supported ones."""
    dist = os_facts.get("distribution")
    major = str(os_facts.get("distribution_major_version", ""))
    key = None
    if dist == "Ubuntu":
        key = "ubuntu" + str(os_facts.get("distribution_version", "")).replace(".", "")
    elif dist == "Debian":
        key = "debian" + major
    elif os_facts.get("os_family") == "RedHat" and dist in _RHEL_LIKE:
        key = "rhel" + major
    if key not in PLATFORMS:
        raise DriverPackageError(
            "%s %s is not supported by the driver role; supported: %s"
            % (dist, os_facts.get("distribution_version", major),
               ", ".join(p["name"] for p in PLATFORMS.values())))
    return key


def repo_arch(platform, machine):
    """NVIDIA's repository directory for the CPU: x86_64, or sbsa for 64-bit Arm servers."""
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "sbsa"
    raise DriverPackageError("CPU architecture %s has no NVIDIA driver repository" % machine)


def version_of(package_version):
    """Upstream driver version of a package version: '1:580.95.05-0ubuntu1' -> '580.95.05'."""
    text = package_version.split(":", 1)[-1]
    return re.split(r"[-~+]", text, 1)[0]


def _spec(platform, name, version_glob):
    if PLATFORMS[platform]["manager"] == "apt":
        return "%s=%s" % (name, version_glob)
    return "%s-%s" % (name, version_glob)


def driver_packages(platform, source, branch, open_modules, server=True, version=None):
    """Package specs that install the driver (compute only: no X server).

    version: an exact driver version (e.g. 580.95.05) or None for the newest of the branch. Names
    that carry the branch need no version; the others get a version glob of the branch.
    """
    manager = PLATFORMS[platform]["manager"]
    distro = PLATFORMS[platform]["distro"]
    glob = (version + "-*" if manager == "apt" else version) if version else branch + ".*"
    flavour = "open" if open_modules else "proprietary"
    if source not in SOURCES:
        raise DriverPackageError("nvidia_driver_source=%s; use one of %s" % (source, ", ".join(SOURCES)))
    if distro == "ubuntu":
        # Ubuntu's -server flavour is the datacenter (ERD/LTSB) build; NVIDIA's repo has none.
        name = "nvidia-driver-%s%s%s" % (branch, "-server" if server and source == "distro" else "",
                                         "-open" if open_modules else "")
        return [_spec(platform, name, glob) if version else name]
    if distro == "debian" and source == "cuda":
        kmod = "nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms"
        return [_spec(platform, n, glob) for n in ("nvidia-driver-cuda", kmod, "nvidia-persistenced")]
    if distro == "debian":
        shipped = DEBIAN_ARCHIVE[platform]
        if branch not in shipped:
            raise DriverPackageError(
                "%s's archive has no driver branch %s (it ships %s); set nvidia_driver_source=cuda for "
                "NVIDIA's repository" % (PLATFORMS[platform]["name"], branch, ", ".join(sorted(shipped))))
        names = shipped[branch][flavour]
        if names is None:
            raise DriverPackageError(
                "%s's archive has no %s kernel module for branch %s; set nvidia_driver_source=cuda"
                % (PLATFORMS[platform]["name"], flavour, branch))
        # nvidia-persistenced is its own source package in Debian, versioned apart from the driver.
        return [_spec(platform, n, glob) for n in names + shipped[branch]["common"]] + ["nvidia-persistenced"]
    if source == "distro":
        raise DriverPackageError("RHEL has no NVIDIA driver packages of its own; set nvidia_driver_source=cuda")
    # RHEL 9: NVIDIA's DNF module streams keep the branch (<branch>-open or <branch>-dkms).
    stream = "@nvidia-driver:%s-%s" % (branch, "open" if open_modules else "dkms")
    return [stream] + ([_spec(platform, "nvidia-driver", version)] if version else [])


def kernel_packages(platform, kernel):
    """What DKMS needs to build the module for the running kernel."""
    if PLATFORMS[platform]["manager"] == "apt":
        return ["linux-headers-%s" % kernel, "dkms"]
    return ["kernel-devel-%s" % kernel, "kernel-headers", "dkms"]


def mok_paths(platform):
    """Where DKMS takes its Machine Owner Key: Ubuntu's dkms signs with shim-signed's MOK, Debian's and
    RHEL's dkms (3.x) with /var/lib/dkms/mok.{key,pub}."""
    if PLATFORMS[platform]["distro"] == "ubuntu":
        return {"key": "/var/lib/shim-signed/mok/MOK.priv", "cert": "/var/lib/shim-signed/mok/MOK.der"}
    return {"key": "/var/lib/dkms/mok.key", "cert": "/var/lib/dkms/mok.pub"}


def fabric_manager_packages(platform, branch, version=None):
    """Fabric Manager (NVSwitch systems). It must run at exactly the driver's version: installed in the
    same transaction, under the same branch pin (or exact version), and checked after the install."""
    if PLATFORMS[platform]["manager"] == "apt":
        names = ["nvidia-fabricmanager-%s" % branch, "libnvidia-nscq-%s" % branch]
        return ["%s=%s-*" % (n, version) for n in names] if version else names
    return ["nvidia-fabric-manager-%s" % (version or branch + "*"), "libnvidia-nscq-%s" % (version or branch + "*")]


def repo_files(platform, source, machine, base=None, key_url=None):
    """The repository file, its signing key and (apt) the branch pin for source=cuda; None for distro.

    apt: a deb822 .sources file with Signed-By (an armored .asc key, which apt reads as is).
    dnf: a .repo file with gpgcheck and a local gpgkey.
    """
    if source != "cuda":
        return None
    manager = PLATFORMS[platform]["manager"]
    url = "%s/%s/%s/" % ((base or REPO_BASE).rstrip("/"), platform, repo_arch(platform, machine))
    key_url = key_url or url + REPO_KEY_FILE[manager]
    if manager == "apt":
        key_path = "/usr/share/keyrings/gpufleet-nvidia-cuda.asc"
        # A flat repository: the suite is "/" and there are no components.
        content = ("# %s\nTypes: deb\nURIs: %s\nSuites: /\nSigned-By: %s\n" % (MANAGED_BY, url, key_path))
        return {"url": url, "key_url": key_url, "key_path": key_path,
                "path": "/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources", "content": content}
    key_path = "/etc/pki/rpm-gpg/RPM-GPG-KEY-gpufleet-nvidia-cuda"
    content = ("# %s\n[gpufleet-nvidia-cuda]\nname=NVIDIA CUDA %s\nbaseurl=%s\nenabled=1\ngpgcheck=1\n"
               "repo_gpgcheck=0\ngpgkey=file://%s\n" % (MANAGED_BY, platform, url, key_path))
    return {"url": url, "key_url": key_url, "key_path": key_path,
            "path": "/etc/yum.repos.d/gpufleet-nvidia-cuda.repo", "content": content}


def apt_pin(platform, branch, version=None):
    """apt preferences for source=cuda: NVIDIA's repository wins, and on the branch.

    The first matching record sets a version's priority (apt_preferences(5)). 1: the distribution's
    own builds of these packages drop to 100 (still installable as plain dependencies), so NVIDIA's
    build wins even at the same version string (Debian 12 and NVIDIA both ship 535.261.03-1).
    2: every version on the branch gets 1001 (what NVIDIA's nvidia-driver-pinning-<branch> does, for
    every branch): apt stays off newer branches, and 1001 also lets it go down a branch.
    """
    origin = "Debian" if PLATFORMS[platform]["distro"] == "debian" else "Ubuntu"
    return ("# %s: NVIDIA driver packages from NVIDIA's repository, on %s\n"
            "Package: %s\nPin: release o=%s\nPin-Priority: 100\n\n"
            "Package: %s\nPin: version %s\nPin-Priority: 1001\n"
            % (MANAGED_BY, "driver %s" % version if version else "branch %s" % branch, _PIN_PACKAGES, origin,
               _PIN_PACKAGES, version + "-*" if version else branch + ".*"))


def unattended_upgrades_config():
    """apt.conf snippet keeping unattended-upgrades off the driver packages."""
    lines = "".join('    "%s";\n' % prefix for prefix in UNATTENDED_BLOCK)
    return ("// %s: the driver changes only through the role (a new driver needs a reboot).\n"
            "Unattended-Upgrade::Package-Blacklist {\n%s};\n" % (MANAGED_BY, lines))


def nouveau_blacklist():
    return ("# %s: nouveau must not claim the GPU before the NVIDIA module.\n"
            "blacklist nouveau\noptions nouveau modeset=0\n" % MANAGED_BY)


def initramfs_command(platform, tools):
    """Command that rebuilds the initramfs so the nouveau blacklist holds at boot; None when the
    host has no initramfs tool (containers)."""
    tool = "update-initramfs" if PLATFORMS[platform]["manager"] == "apt" else "dracut"
    if tool not in (tools or []):
        return None
    return ["update-initramfs", "-u", "-k", "all"] if tool == "update-initramfs" else ["dracut", "-f", "--regenerate-all"]


# ---------------------------------------------------------------------------------------------
# What is installed
# ---------------------------------------------------------------------------------------------
def is_managed(name):
    return bool(_MANAGED.match(name)) and not _NOT_DRIVER.match(name)


def installed_driver(packages):
    """{version, branch, open, packages} of the driver installed from packages, or None.

    packages: {name: package version} of the host (the facts module lists NVIDIA ones).
    open: True/False from the kernel module package, None when no module package is installed.
    """
    libs = sorted(version_of(v) for n, v in packages.items() if _DRIVER_LIB.match(n))
    if not libs:
        return None
    version = libs[-1]
    kmods = [n for n in packages if _OPEN_KMOD.match(n) or _PROPRIETARY_KMOD.match(n)]
    open_modules = None
    if kmods:
        open_modules = any(_OPEN_KMOD.match(n) for n in kmods)
    return {"version": version, "branch": version.split(".")[0], "open": open_modules,
            "packages": sorted(n for n in packages if is_managed(n))}


def fabric_manager_version(packages):
    versions = [version_of(v) for n, v in packages.items() if _FABRIC_MANAGER.match(n)]
    return versions[0] if versions else None


def hold_list(packages, branch):
    """Installed driver packages of the branch: what gets held (apt-mark hold / dnf versionlock)."""
    return sorted(n for n, v in packages.items() if is_managed(n) and version_of(v).startswith(branch + "."))
