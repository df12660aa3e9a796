# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""What the container_toolkit role does on one host, decided from facts (pure).

Docker engine (kept when present; else the distribution's or Docker's repository), the NVIDIA
Container Toolkit pinned to one version and held, `nvidia-ctk runtime configure` only when
daemon.json has no nvidia runtime, daemon.json merged (the user's keys survive), the CDI spec
generated and refreshed when the loaded driver changes, and the GPU container check where a GPU
device exists. Unit-tested in tests/unit/test_toolkit_plan.py.
"""
from __future__ import annotations

import json
import re

from ansible_collections.gpufleet.serving.plugins.module_utils import driver_packages as pkgs

MODES = ("configure", "install")
DOCKER_SOURCES = ("distro", "docker")
GPU_CHECK = ("auto", "never")
TOOLKIT_PACKAGES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                    "libnvidia-container1")
TOOLKIT_REPO = "https://nvidia.github.io/libnvidia-container/stable"
TOOLKIT_KEY = "https://nvidia.github.io/libnvidia-container/gpgkey"
DOCKER_REPO = "https://download.docker.com/linux"
DOCKER_CE = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
# The nvidia runtime as `nvidia-ctk runtime configure --runtime=docker` writes it.
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}
_SO_VERSION = re.compile(r"\.so\.(\d{3}\.\d+(?:\.\d+)?)\b")


class ToolkitError(ValueError):
    """Bad input or a host the role must not change; the message names the fix."""


def _deb_arch(machine):
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def docker_engine(platform, source, dockerd, codename, machine, package="docker.io"):
    """{keep, install, repo}: an existing engine is kept whatever its origin."""
    if dockerd:
        return {"keep": True, "install": [], "repo": None}
    manager = pkgs.PLATFORMS[platform]["manager"]
    distro = pkgs.PLATFORMS[platform]["distro"]
    if source == "distro":
        if manager != "apt":
            raise ToolkitError("RHEL ships Podman, not a Docker engine: set container_toolkit_docker_source=docker "
                               "for Docker's repository")
        return {"keep": False, "install": [package], "repo": None}
    if manager == "apt":
        key_path = "/usr/share/keyrings/gpufleet-docker.asc"
        url = "%s/%s" % (DOCKER_REPO, distro)
        repo = {"path": "/etc/apt/sources.list.d/gpufleet-docker.sources", "key_url": url + "/gpg",
                "key_path": key_path,
                "content": "# Managed by gpufleet.serving.container_toolkit\nTypes: deb\nURIs: %s\nSuites: %s\n"
                           "Components: stable\nArchitectures: %s\nSigned-By: %s\n"
                           % (url, codename, _deb_arch(machine), key_path)}
    else:
        key_path = "/etc/pki/rpm-gpg/RPM-GPG-KEY-gpufleet-docker"
        repo = {"path": "/etc/yum.repos.d/gpufleet-docker.repo", "key_url": DOCKER_REPO + "/rhel/gpg",
                "key_path": key_path,
                "content": "# Managed by gpufleet.serving.container_toolkit\n[gpufleet-docker-ce]\nname=Docker CE\n"
                           "baseurl=%s/rhel/$releasever/$basearch/stable\nenabled=1\ngpgcheck=1\ngpgkey=file://%s\n"
                           % (DOCKER_REPO, key_path)}
    return {"keep": False, "install": list(DOCKER_CE), "repo": repo}


def toolkit_repo(platform, machine, base=None, key_url=None):
    """NVIDIA's libnvidia-container repository (flat apt repository / dnf .repo), signed."""
    base = (base or TOOLKIT_REPO).rstrip("/")
    if pkgs.PLATFORMS[platform]["manager"] == "apt":
        key_path = "/usr/share/keyrings/gpufleet-nvidia-container-toolkit.asc"
        url = "%s/deb/%s/" % (base, _deb_arch(machine))
        return {"path": "/etc/apt/sources.list.d/gpufleet-nvidia-container-toolkit.sources", "url": url,
                "key_url": key_url or TOOLKIT_KEY, "key_path": key_path,
                "content": "# Managed by gpufleet.serving.container_toolkit\nTypes: deb\nURIs: %s\nSuites: /\n"
                           "Signed-By: %s\n" % (url, key_path)}
    key_path = "/etc/pki/rpm-gpg/RPM-GPG-KEY-gpufleet-nvidia-container-toolkit"
    url = "%s/rpm/%s" % (base, machine)
    # As NVIDIA's own .repo: the repository metadata is signed (repo_gpgcheck), the RPMs are not.
    return {"path": "/etc/yum.repos.d/gpufleet-nvidia-container-toolkit.repo", "url": url,
            "key_url": key_url or TOOLKIT_KEY, "key_path": key_path,
            "content": "# Managed by gpufleet.serving.container_toolkit\n[gpufleet-nvidia-container-toolkit]\n"
                       "name=NVIDIA Container Toolkit\nbaseurl=%s\nenabled=1\ngpgcheck=0\nrepo_gpgcheck=1\n"
                       "gpgkey=file://%s\n" % (url, key_path)}


def toolkit_packages(platform, version):
    """The four toolkit packages at exactly one version (they must move together)."""
    if pkgs.PLATFORMS[platform]["manager"] == "apt":
        return ["%s=%s" % (name, version) for name in TOOLKIT_PACKAGES]
    return ["%s-%s" % (name, version) for name in TOOLKIT_PACKAGES]


def parse_daemon_json(text, path="/etc/docker/daemon.json"):
    """daemon.json as a dict ({} when absent or empty); invalid JSON stops the role (Docker would not start)."""
    if not text or not text.strip():
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ToolkitError("%s is not valid JSON (%s): fix it by hand; the role does not rewrite a file it cannot "
                           "read" % (path, exc))
    if not isinstance(config, dict):
        raise ToolkitError("%s must hold a JSON object" % path)
    return config


def merge(current, wanted):
    """Recursive merge: the wanted keys are set, every other key (the user's) stays."""
    merged = dict(current)
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def daemon_json(current_text, wanted):
    """The daemon.json text the role writes: current content with the wanted keys merged in."""
    return json.dumps(merge(parse_daemon_json(current_text), wanted or {}), indent=2, sort_keys=True) + "\n"


def cdi_spec_driver(spec_text):
    """The driver versions a CDI spec mounts (nvidia-ctk names the libraries by version: libcuda.so.580.95.05)."""
    return sorted(set(_SO_VERSION.findall(spec_text or "")))


def cdi_plan(spec_text, gpu_facts, nvidia_ctk, enabled=True):
    """{generate, reason}: a spec for the loaded driver; regenerated when it mounts another driver's libraries."""
    if not enabled:
        return {"generate": False, "reason": "container_toolkit_cdi=false"}
    if not nvidia_ctk:
        return {"generate": False, "reason": "nvidia-ctk is not installed"}
    if gpu_facts.get("state") != "healthy":
        return {"generate": False, "reason": "no loaded driver to describe (%s)" % gpu_facts.get("state")}
    driver = gpu_facts["driver_version"]
    found = cdi_spec_driver(spec_text)
    if spec_text is None:
        return {"generate": True, "reason": "no CDI spec yet"}
    if found != [driver]:
        return {"generate": True, "reason": "the CDI spec mounts driver %s, the loaded driver is %s"
                % (", ".join(found) or "(none)", driver)}
    return {"generate": False, "reason": "the CDI spec matches driver %s" % driver}


def gpu_check(gpu_facts, device_nodes, runtime_ready, setting="auto"):
    """{run, note}: run a container with --gpus all only where a GPU device and the runtime exist."""
    if setting == "never":
        return {"run": False, "note": "GPU container check off (container_toolkit_gpu_check=never)"}
    if gpu_facts.get("state") != "healthy":
        return {"run": False, "note": "GPU container check skipped: no working GPU driver (%s)" % gpu_facts.get("state")}
    if not device_nodes:
        return {"run": False, "note": "GPU container check skipped: no /dev/nvidiactl, so no GPU device to give a "
                                      "container (a simulated GPU, as in the lab)"}
    if not runtime_ready:
        return {"run": False, "note": "GPU container check skipped: the NVIDIA Container Toolkit is not installed"}
    return {"run": True, "note": ""}


def gpu_check_result(output, gpu_facts):
    """{ok, reason} from `nvidia-smi -L` run inside the container: every GPU of the host, by UUID."""
    seen = re.findall(r"\(UUID: (GPU-[^)\s]+)\)", output or "")
    wanted = [g["uuid"] for g in gpu_facts.get("gpus", [])]
    if sorted(seen) != sorted(wanted):
        return {"ok": False, "reason": "a container with --gpus all sees %s, the host has %s: check `nvidia-ctk "
                "runtime configure`, the CDI spec and `journalctl -u docker`" % (seen or "no GPU", wanted)}
    return {"ok": True, "reason": "a container with --gpus all sees all %d GPU(s)" % len(seen)}


def plan_toolkit(facts, gpu_facts, os_facts, settings):
    """The container_toolkit plan; raises ToolkitError on bad input."""
    mode = settings.get("mode") or "configure"
    if mode not in MODES:
        raise ToolkitError("container_toolkit_mode=%s; use one of %s" % (mode, ", ".join(MODES)))
    source = settings.get("docker_source") or "distro"
    if source not in DOCKER_SOURCES:
        raise ToolkitError("container_toolkit_docker_source=%s; use one of %s" % (source, ", ".join(DOCKER_SOURCES)))
    platform = pkgs.platform_of(os_facts)
    machine = os_facts.get("architecture", "x86_64")
    engine = docker_engine(platform, source, facts.get("dockerd"), os_facts.get("distribution_release"), machine,
                           settings.get("docker_package") or "docker.io")
    installed = facts.get("packages", {})
    held = [n for n in facts.get("held", []) if n in TOOLKIT_PACKAGES]
    toolkit = {"repo": None, "install": [], "unhold": [], "hold": []}
    if mode == "install":
        version = settings.get("version")
        if not version:
            raise ToolkitError("container_toolkit_nvidia_version is empty: the toolkit is installed at one pinned "
                               "version (e.g. 1.17.8-1)")
        toolkit["repo"] = toolkit_repo(platform, machine, settings.get("repo_base"), settings.get("repo_key_url"))
        if any(installed.get(n, "").split(":")[-1] != version for n in TOOLKIT_PACKAGES):
            toolkit["install"] = toolkit_packages(platform, version)
            toolkit["unhold"] = held
            held = []
        toolkit["hold"] = [n for n in TOOLKIT_PACKAGES if n not in held]
    nvidia_ctk = bool(facts.get("nvidia_ctk")) or bool(toolkit["install"])
    runtimes = parse_daemon_json(facts.get("daemon_json")).get("runtimes", {})
    return {
        "platform": platform,
        "manager": pkgs.PLATFORMS[platform]["manager"],
        "docker": engine,
        "toolkit": toolkit,
        # nvidia-ctk runtime configure only when the nvidia runtime is missing from daemon.json.
        "runtime_configure": bool(settings.get("configure_runtime", True)) and nvidia_ctk and "nvidia" not in runtimes,
        "nvidia_ctk": nvidia_ctk,
    }
