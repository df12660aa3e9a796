"""container_toolkit decisions: Docker engine source, pinned toolkit, nvidia-ctk only when the runtime is
missing, daemon.json merge (user keys survive), CDI refresh on a driver change, the GPU container check."""
import json

import pytest
from gpu_fixtures import gpu_facts

from ansible.plugins.filter.core import to_nice_json
from ansible_collections.gpufleet.serving.plugins.module_utils import container_toolkit as ct

DEBIAN12 = {"distribution": "Debian", "distribution_version": "12.8", "distribution_major_version": "12",
            "distribution_release": "bookworm", "os_family": "Debian", "architecture": "x86_64"}
UBUNTU2204 = dict(DEBIAN12, distribution="Ubuntu", distribution_version="22.04", distribution_major_version="22",
                  distribution_release="jammy")
RHEL9 = {"distribution": "Rocky", "distribution_version": "9.5", "distribution_major_version": "9",
         "distribution_release": "Blue Onyx", "os_family": "RedHat", "architecture": "x86_64"}
TOOLKIT = {n: "1.17.8-1" for n in ct.TOOLKIT_PACKAGES}
LAB_DAEMON = '{"storage-driver": "overlay2", "log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}}'


def facts(dockerd="/usr/sbin/dockerd", nvidia_ctk=None, packages=None, held=None, daemon=LAB_DAEMON):
    return {"dockerd": dockerd, "nvidia_ctk": nvidia_ctk, "packages": packages or {}, "held": held or [],
            "daemon_json": daemon, "cdi_spec": None, "device_nodes": False}


def spec(driver):
    return ("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits:\n  mounts:\n"
            "  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.%s\n"
            "  - hostPath: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.%s\n" % (driver, driver))


def test_lab_site_run_configures_only():
    """The lab: configure mode, docker.io present, no toolkit: daemon.json merge only."""
    plan = ct.plan_toolkit(facts(), gpu_facts("h100"), DEBIAN12, {})
    assert plan["docker"] == {"keep": True, "install": [], "repo": None}
    assert plan["toolkit"] == {"repo": None, "install": [], "unhold": [], "hold": []}
    assert not plan["runtime_configure"] and not plan["nvidia_ctk"]


def test_install_mode_pins_and_holds_the_toolkit():
    plan = ct.plan_toolkit(facts(), gpu_facts("h100"), DEBIAN12, {"mode": "install", "version": "1.17.7-1"})
    assert plan["toolkit"]["install"] == ["nvidia-container-toolkit=1.17.7-1", "nvidia-container-toolkit-base=1.17.7-1",
                                          "libnvidia-container-tools=1.17.7-1", "libnvidia-container1=1.17.7-1"]
    assert plan["toolkit"]["hold"] == list(ct.TOOLKIT_PACKAGES)
    assert plan["toolkit"]["repo"]["content"].splitlines()[1:] == [
        "Types: deb", "URIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64/", "Suites: /",
        "Signed-By: /usr/share/keyrings/gpufleet-nvidia-container-toolkit.asc"]
    # nvidia-ctk comes with the install, so the runtime gets registered in the same run.
    assert plan["runtime_configure"] and plan["nvidia_ctk"]


def test_toolkit_at_the_pinned_version_and_held_is_left_alone():
    plan = ct.plan_toolkit(facts(nvidia_ctk="/usr/bin/nvidia-ctk", packages=TOOLKIT, held=list(TOOLKIT)),
                           gpu_facts("h100"), DEBIAN12, {"mode": "install", "version": "1.17.8-1"})
    assert plan["toolkit"]["install"] == [] and plan["toolkit"]["unhold"] == [] and plan["toolkit"]["hold"] == []


def test_toolkit_version_change_unholds_installs_and_holds_again():
    old = {n: "1.17.7-1" for n in ct.TOOLKIT_PACKAGES}
    plan = ct.plan_toolkit(facts(nvidia_ctk="/usr/bin/nvidia-ctk", packages=old, held=list(old)), gpu_facts("h100"),
                           DEBIAN12, {"mode": "install", "version": "1.17.8-1"})
    assert plan["toolkit"]["unhold"] == list(ct.TOOLKIT_PACKAGES) == plan["toolkit"]["hold"]
    assert plan["toolkit"]["install"][0] == "nvidia-container-toolkit=1.17.8-1"


def test_runtime_configure_only_when_the_nvidia_runtime_is_missing():
    with_runtime = json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}})
    assert not ct.plan_toolkit(facts(nvidia_ctk="/usr/bin/nvidia-ctk", daemon=with_runtime), {}, DEBIAN12,
                               {})["runtime_configure"]
    assert ct.plan_toolkit(facts(nvidia_ctk="/usr/bin/nvidia-ctk", daemon=None), {}, DEBIAN12, {})["runtime_configure"]
    assert not ct.plan_toolkit(facts(nvidia_ctk="/usr/bin/nvidia-ctk"), {}, DEBIAN12,
                               {"configure_runtime": False})["runtime_configure"]


def test_docker_engine_sources():
    assert ct.plan_toolkit(facts(dockerd=None), {}, DEBIAN12, {})["docker"]["install"] == ["docker.io"]
    docker = ct.plan_toolkit(facts(dockerd=None), {}, UBUNTU2204, {"docker_source": "docker"})["docker"]
    assert docker["install"] == ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                                 "docker-compose-plugin"]
    assert docker["repo"]["key_url"] == "https://download.docker.com/linux/ubuntu/gpg"
    assert "URIs: https://download.docker.com/linux/ubuntu\nSuites: jammy\nComponents: stable\nArchitectures: amd64\n" \
        in docker["repo"]["content"]
    rhel = ct.plan_toolkit(facts(dockerd=None), {}, RHEL9, {"docker_source": "docker"})["docker"]
    assert "baseurl=https://download.docker.com/linux/rhel/$releasever/$basearch/stable" in rhel["repo"]["content"]
    with pytest.raises(ct.ToolkitError, match="RHEL ships Podman"):
        ct.plan_toolkit(facts(dockerd=None), {}, RHEL9, {})


def test_rhel_toolkit_repository_and_packages():
    plan = ct.plan_toolkit(facts(), {}, RHEL9, {"mode": "install", "version": "1.17.8-1"})
    assert plan["toolkit"]["install"][0] == "nvidia-container-toolkit-1.17.8-1"
    assert "baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/x86_64\n" in plan["toolkit"]["repo"]["content"]
    assert "repo_gpgcheck=1" in plan["toolkit"]["repo"]["content"]


@pytest.mark.parametrize("settings,message", [
    ({"mode": "everything"}, "container_toolkit_mode=everything; use one of configure, install"),
    ({"docker_source": "snap"}, "container_toolkit_docker_source=snap"),
    ({"mode": "install", "version": ""}, "container_toolkit_nvidia_version is empty"),
])
def test_bad_input(settings, message):
    with pytest.raises(ct.ToolkitError, match=message):
        ct.plan_toolkit(facts(), {}, DEBIAN12, settings)


def test_daemon_json_merge_keeps_user_keys():
    current = json.dumps({"storage-driver": "overlay2", "registry-mirrors": ["https://mirror.local"],
                          "log-opts": {"max-size": "10m", "labels": "team"},
                          "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}, indent=4)
    merged = json.loads(ct.daemon_json(current, {"log-driver": "json-file", "log-opts": {"max-size": "50m"}}))
    assert merged == {"storage-driver": "overlay2", "registry-mirrors": ["https://mirror.local"],
                      "log-driver": "json-file", "log-opts": {"max-size": "50m", "labels": "team"},
                      "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}


def test_daemon_json_text_is_what_the_role_wrote_before():
    """Same bytes as the previous role's to_nice_json(indent=2): hosts it converged stay unchanged."""
    wanted = {"log-driver": "json-file", "log-opts": {"max-size": "50m", "max-file": "3"}}
    before = to_nice_json(ct.merge(json.loads(LAB_DAEMON), wanted), indent=2) + "\n"
    assert ct.daemon_json(LAB_DAEMON, wanted) == before
    assert ct.daemon_json(None, {}) == "{}\n"


def test_invalid_daemon_json_is_not_rewritten():
    with pytest.raises(ct.ToolkitError, match="is not valid JSON .*fix it by hand"):
        ct.daemon_json('{"debug": true,,}', {})


def test_cdi_spec_follows_the_loaded_driver():
    h100 = gpu_facts("h100", driver="580.95.05")
    assert ct.cdi_plan(None, h100, True) == {"generate": True, "reason": "no CDI spec yet"}
    assert not ct.cdi_plan(spec("580.95.05"), h100, True)["generate"]
    stale = ct.cdi_plan(spec("535.261.03"), h100, True)
    assert stale == {"generate": True, "reason": "the CDI spec mounts driver 535.261.03, the loaded driver is 580.95.05"}
    assert not ct.cdi_plan(None, h100, False)["generate"]
    assert not ct.cdi_plan(None, {"state": "driver_not_loaded"}, True)["generate"]
    assert not ct.cdi_plan(None, h100, True, enabled=False)["generate"]


def test_gpu_check_runs_only_where_a_gpu_device_exists():
    h100 = gpu_facts("h100")
    assert ct.gpu_check(h100, device_nodes=True, runtime_ready=True) == {"run": True, "note": ""}
    lab = ct.gpu_check(h100, device_nodes=False, runtime_ready=True)
    assert not lab["run"] and "no /dev/nvidiactl" in lab["note"] and "simulated GPU" in lab["note"]
    assert not ct.gpu_check(h100, True, False)["run"]
    assert not ct.gpu_check({"state": "no_driver"}, True, True)["run"]
    assert not ct.gpu_check(h100, True, True, setting="never")["run"]


def test_gpu_check_result_compares_uuids():
    h100 = gpu_facts("h100", count=2)
    out = "".join("GPU %d: NVIDIA H100 80GB HBM3 (UUID: %s)\n" % (g["index"], g["uuid"]) for g in h100["gpus"])
    assert ct.gpu_check_result(out, h100) == {"ok": True, "reason": "a container with --gpus all sees all 2 GPU(s)"}
    one = ct.gpu_check_result(out.splitlines()[0], h100)
    assert not one["ok"] and "journalctl -u docker" in one["reason"]
