"""What the nvidia_driver role does, decided from facts: install/change/none, bad input before any
change, the reboot decision and the post-reboot check - including facts produced by the real
nvidia-smi parser from faked nvidia-smi outputs and /proc/driver/nvidia/version texts."""
import os

import pytest
from gpu_fixtures import gpu_facts

from ansible_collections.gpufleet.serving.plugins.module_utils import nvidia_smi
from ansible_collections.gpufleet.serving.plugins.module_utils.driver_host import loaded_driver
from ansible_collections.gpufleet.serving.plugins.module_utils.driver_packages import DriverPackageError
from ansible_collections.gpufleet.serving.plugins.plugin_utils.driver_plan import (
    activation, plan_driver, verify_loaded)
from ansible_collections.gpufleet.serving.plugins.plugin_utils.driver_policy import DriverPolicyError

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "real_h100")
DEBIAN12 = {"distribution": "Debian", "distribution_version": "12.8", "distribution_major_version": "12",
            "os_family": "Debian", "architecture": "x86_64"}
UBUNTU2404 = {"distribution": "Ubuntu", "distribution_version": "24.04", "distribution_major_version": "24",
              "os_family": "Debian", "architecture": "x86_64"}
NO_DRIVER = {"state": "no_driver", "message": "nvidia-smi is not installed (no NVIDIA driver)"}
NOT_LOADED = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.95\n"


def host(packages=None, held=None, loaded=None, module=None, gpus=("0x2330",), **changes):
    facts = {"kernel": "6.1.0-28-amd64", "package_manager": "apt", "packages": packages or {}, "held": held or [],
             "loaded": loaded, "module": module, "nouveau_loaded": False, "secure_boot": False,
             "mok_enrolled": None, "pci": {"gpus": list(gpus), "nvswitch": False}, "runfile": False,
             "initramfs_tools": ["update-initramfs"], "repo_files": []}
    facts.update(changes)
    return facts


def debian_cuda(version, open_modules=True, fabric_manager=False):
    deb = version + "-1"
    packages = {"nvidia-driver-cuda": deb, "libcuda1": deb, "nvidia-smi": deb, "nvidia-persistenced": deb,
                "nvidia-kernel-open-dkms" if open_modules else "nvidia-kernel-dkms": deb}
    if fabric_manager:
        packages["nvidia-fabricmanager-" + version.split(".")[0]] = deb
    return packages


def module(version, open_modules=True, signed=False):
    return {"version": version, "open": open_modules, "signed": signed}


def smi_facts(outputs, proc_version=None):
    """gpufleet_gpu facts from the real parser, nvidia-smi faked: outputs maps argv[1] to (rc, stdout)."""
    def run(argv):
        rc, out = outputs.get(argv[1], outputs["*"])
        return rc, out, ""

    def read_text(path):
        if proc_version is None:
            raise IOError(path)
        return proc_version
    return nvidia_smi.collect("/usr/bin/nvidia-smi", run, read_text)[0]


def h100_smi(driver):
    line = "0, GPU-b2f3a3a3-a457-1729-161d-649a0654b961, NVIDIA H100 80GB HBM3, 81559, 9.0, 00000000:00:06.0, Disabled, %s\n"
    return {"--version": (0, "DRIVER version      : %s\nCUDA Version        : 13.0\n" % driver),
            nvidia_smi.MIG_PENDING_ARGS[0]: (0, "0, Disabled, Disabled\n"),  # an H100 is MIG-capable: one more query
            "*": (0, line % driver)}


# --- plan: what to do ------------------------------------------------------------------------------

def test_bare_host_installs_the_table_branch_for_the_pci_gpu():
    plan = plan_driver(host(), NO_DRIVER, DEBIAN12, {})
    assert plan["action"] == "install" and plan["manage"]
    assert plan["want"] == {"branch": "580", "version": None, "open": True, "architecture": "hopper"}
    assert plan["install"] == ["nvidia-driver-cuda=580.*", "nvidia-kernel-open-dkms=580.*", "nvidia-persistenced=580.*"]
    assert plan["kernel_packages"] == ["linux-headers-6.1.0-28-amd64", "dkms"]
    assert plan["repo"]["path"] == "/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources"
    assert "Pin: version 580.*" in plan["pin"]["content"]
    assert plan["services"] == ["nvidia-persistenced"] and plan["blockers"] == []


def test_host_already_right_is_not_touched():
    packages = debian_cuda("580.95.05")
    plan = plan_driver(host(packages, held=sorted(packages)), gpu_facts("h100", driver="580.95.05"), DEBIAN12, {})
    assert plan["action"] == "none"
    assert plan["install"] == [] and plan["kernel_packages"] == [] and plan["unhold"] == []


def test_branch_change_unholds_and_installs_the_new_branch():
    packages = debian_cuda("535.261.03")
    plan = plan_driver(host(packages, held=sorted(packages)), gpu_facts("h100", driver="535.261.03"), DEBIAN12,
                       {"branch": "580"})
    assert plan["action"] == "change"
    assert plan["unhold"] == sorted(packages)
    assert plan["install"][0] == "nvidia-driver-cuda=580.*"
    assert plan["notes"] == ["driver packages 535.261.03 (open kernel module) -> branch 580 (open modules)"]


def test_downgrade_and_flavour_change_are_changes():
    packages = debian_cuda("580.95.05")
    down = plan_driver(host(packages), gpu_facts("h100", driver="580.95.05"), DEBIAN12, {"branch": "535"})
    assert down["action"] == "change" and "Pin: version 535.*" in down["pin"]["content"]
    flavour = plan_driver(host(packages), gpu_facts("h100", driver="580.95.05"), DEBIAN12,
                          {"kernel_module": "proprietary"})
    assert flavour["action"] == "change" and "nvidia-kernel-dkms=580.*" in flavour["install"]


def test_exact_version_pins_and_changes_within_the_branch():
    plan = plan_driver(host(debian_cuda("580.95.05")), gpu_facts("h100", driver="580.95.05"), DEBIAN12,
                       {"version": "580.82.07"})
    assert plan["action"] == "change"
    assert plan["install"][0] == "nvidia-driver-cuda=580.82.07-*"
    assert "Pin: version 580.82.07-*" in plan["pin"]["content"]


def test_ubuntu_distro_server_open():
    plan = plan_driver(host(), NO_DRIVER, UBUNTU2404, {"source": "distro"})
    assert plan["install"] == ["nvidia-driver-580-server-open"]
    assert plan["repo"] is None and plan["pin"] is None and plan["unattended"] is not None


def test_driver_not_installed_from_packages_and_right_is_left_alone():
    """The real H100 host: driver mounted into the container, no driver package, /proc says 580 open."""
    with open(os.path.join(FIXTURES, "proc-driver-nvidia-version.txt")) as handle:
        loaded = loaded_driver(handle.read())
    ubuntu = dict(UBUNTU2404)
    plan = plan_driver(host(loaded=loaded), gpu_facts("h100", driver="580.159.04"), ubuntu,
                       {"branch": "580", "kernel_module": "open"})
    assert plan["action"] == "none" and not plan["manage"] and plan["blockers"] == []
    assert plan["repo"] is None and plan["blacklist"] is None and plan["services"] == []
    assert "not installed from packages" in plan["notes"][0] and "left untouched" in plan["notes"][0]


def test_wrong_driver_not_installed_from_packages_is_never_overwritten():
    plan = plan_driver(host(loaded={"version": "550.54.15", "open": False}, runfile=True),
                       gpu_facts("h100", driver="550.54.15"), DEBIAN12, {})
    assert not plan["manage"] and plan["install"] == []
    assert "never installs packages over a driver it does not manage" in plan["blockers"][0]
    assert "nvidia-uninstall" in plan["blockers"][0] and "runfile installer" in plan["blockers"][0]


def test_secure_boot_without_a_mok_stops_before_the_install():
    plan = plan_driver(host(secure_boot=True), NO_DRIVER, DEBIAN12, {})
    assert "Secure Boot is on" in plan["blockers"][0] and "mokutil --import" in plan["blockers"][0]
    with_mok = plan_driver(host(secure_boot=True), NO_DRIVER, DEBIAN12, {"mok": True})
    assert with_mok["blockers"] == [] and with_mok["mok"] == {"key": "/var/lib/dkms/mok.key",
                                                              "cert": "/var/lib/dkms/mok.pub"}
    # Nothing to build on a host that is already right: Secure Boot is no reason to stop.
    right = plan_driver(host(debian_cuda("580.95.05"), secure_boot=True), gpu_facts("h100", driver="580.95.05"),
                        DEBIAN12, {})
    assert right["action"] == "none" and right["blockers"] == []


def test_fabric_manager_on_nvswitch_systems_at_the_driver_version():
    nvswitch = host(pci={"gpus": ["0x2330"] * 8, "nvswitch": True})
    plan = plan_driver(nvswitch, NO_DRIVER, DEBIAN12, {})
    assert plan["install"][-2:] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert plan["services"] == ["nvidia-persistenced", "nvidia-fabricmanager"]
    # Driver right but Fabric Manager at another version: a change.
    packages = dict(debian_cuda("580.95.05"), **{"nvidia-fabricmanager-580": "580.82.07-1"})
    stale = plan_driver(dict(nvswitch, packages=packages), gpu_facts("h100", driver="580.95.05"), DEBIAN12, {})
    assert stale["action"] == "change"
    with pytest.raises(DriverPackageError, match="Fabric Manager .* Debian's archive does not have"):
        plan_driver(nvswitch, NO_DRIVER, DEBIAN12, {"source": "distro", "branch": "535"})


def test_repository_configured_elsewhere_is_kept():
    plan = plan_driver(host(repo_files=["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"]), NO_DRIVER, DEBIAN12, {})
    assert plan["repo"] is None and "cuda-debian12-x86_64.list" in plan["notes"][0]


# --- plan: bad input fails before any change -------------------------------------------------------

@pytest.mark.parametrize("facts,settings,os_facts,message", [
    (NO_DRIVER, {"branch": "999"}, DEBIAN12, r"nvidia_driver_branch=999 is not a known branch; use one of 535, 570, 580"),
    (gpu_facts("rtx5090"), {"branch": "535"}, DEBIAN12, r"nvidia_driver_branch=535 is below 570, the minimum for blackwell"),
    (gpu_facts("rtx5090"), {"kernel_module": "proprietary"}, DEBIAN12, r"blackwell GPUs need the open kernel modules"),
    (gpu_facts("h100", compute_capability="7.0"), {"kernel_module": "open"}, DEBIAN12,
     r"open kernel modules need Turing \(CC 7.5\) or newer and this GPU is volta"),
    (gpu_facts("h100", compute_capability="7.0"), {}, DEBIAN12, r"GPU 7.0 is not supported"),
    (gpu_facts("h100"), {"version": "535.261.03"}, DEBIAN12, r"nvidia_driver_version=535.261.03 is not on branch 580"),
    (gpu_facts("h100"), {"fabric_manager": "yes"}, DEBIAN12, r"nvidia_driver_fabric_manager=yes"),
    (gpu_facts("h100"), {}, dict(DEBIAN12, distribution_major_version="11", distribution_version="11.9"),
     r"Debian 11.9 is not supported by the driver role"),
    (gpu_facts("h100"), {"source": "distro"}, DEBIAN12, r"Debian 12's archive has no driver branch 580"),
])
def test_bad_input_fails_before_any_change(facts, settings, os_facts, message):
    with pytest.raises((DriverPolicyError, DriverPackageError), match=message):
        plan_driver(host(), facts, os_facts, settings, hostname="gpu-7")


def test_open_modules_on_a_pre_turing_gpu_found_on_the_pci_bus():
    with pytest.raises(DriverPolicyError, match="host gpu-7: nvidia_driver_kernel_module=open, but the open kernel"):
        plan_driver(host(gpus=["0x1db1"]), NO_DRIVER, DEBIAN12, {"kernel_module": "open"}, hostname="gpu-7")


def test_gpu_unknown_without_driver_asks_for_the_architecture():
    with pytest.raises(DriverPolicyError, match="no NVIDIA GPU; set nvidia_driver_gpu_architecture"):
        plan_driver(host(gpus=[]), NO_DRIVER, DEBIAN12, {})
    with pytest.raises(DriverPolicyError, match="device\\(s\\) 0x9999 the knowledge table does not know"):
        plan_driver(host(gpus=["0x9999"]), NO_DRIVER, DEBIAN12, {})
    assert plan_driver(host(gpus=[]), NO_DRIVER, DEBIAN12, {"architecture": "blackwell"})["want"]["open"] is True


@pytest.mark.parametrize("device,architecture", [("0x2330", "hopper"), ("0x26b9", "ada"), ("0x2b85", "blackwell"),
                                                 ("0x1eb1", "turing"), ("0x20b0", "ampere"), ("0x2236", "ampere")])
def test_pci_device_ids_of_the_lab_and_common_cards(device, architecture):
    assert plan_driver(host(gpus=[device]), NO_DRIVER, DEBIAN12, {})["want"]["architecture"] == architecture


# --- activation: reboot or not, never into an unloadable module --------------------------------------

def plan_for(packages=None, **settings):
    return plan_driver(host(packages or {}), NO_DRIVER, DEBIAN12, settings)


def test_loaded_is_installed_no_reboot_and_holds_what_is_not_held():
    packages = debian_cuda("580.95.05")
    after = host(packages, held=["libcuda1"], module=module("580.95.05"))
    result = activation(plan_for(), after, gpu_facts("h100", driver="580.95.05"), changed=False)
    assert result["ok"] and not result["reboot"] and not result["pending"]
    assert result["hold"] == ["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced", "nvidia-smi"]


@pytest.mark.parametrize("smi,proc", [
    ({"*": (9, NOT_LOADED)}, None),                                   # fresh install: nothing loaded
    ({"*": (18, MISMATCH)}, None),                                    # upgrade: the old module still loaded
    (h100_smi("535.261.03"), None),                                   # the faked tool still reports 535
    ({"*": (18, MISMATCH)}, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.261.03  Release Build\n"),
])
def test_new_driver_installed_needs_a_reboot(smi, proc):
    gpu = smi_facts(smi, proc)
    after = host(debian_cuda("580.95.05"), loaded=loaded_driver(proc), module=module("580.95.05"))
    result = activation(plan_for(), after, gpu, changed=True)
    assert result["ok"] and result["reboot"] and not result["pending"], result


def test_reboot_never_leaves_it_pending():
    after = host(debian_cuda("580.95.05"), module=module("580.95.05"))
    result = activation(plan_for(), after, smi_facts({"*": (9, NOT_LOADED)}), changed=True, reboot_mode="never")
    assert result["ok"] and result["pending"] and not result["reboot"]
    assert "reboot to load it" in result["reason"]


def test_reboot_always_after_a_change_even_when_loaded():
    after = host(debian_cuda("580.95.05"), module=module("580.95.05"))
    gpu = smi_facts(h100_smi("580.95.05"))
    assert activation(plan_for(), after, gpu, changed=True, reboot_mode="always")["reboot"]
    assert not activation(plan_for(), after, gpu, changed=False, reboot_mode="always")["reboot"]


def test_nouveau_loaded_needs_a_reboot():
    after = host(debian_cuda("580.95.05"), module=module("580.95.05"), nouveau_loaded=True)
    result = activation(plan_for(), after, NO_DRIVER, changed=True)
    assert result["reboot"] and "nouveau loaded" in result["reason"]


def test_no_module_built_for_the_running_kernel_means_no_reboot():
    after = host(debian_cuda("580.95.05"), module=None)
    result = activation(plan_for(), after, smi_facts({"*": (9, NOT_LOADED)}), changed=True)
    assert not result["ok"] and not result["reboot"]
    assert "no nvidia module 580.95.05 is built for the running kernel 6.1.0-28-amd64" in result["reason"]
    stale = activation(plan_for(), dict(after, module=module("535.261.03")), NO_DRIVER, changed=True)
    assert not stale["ok"] and "modinfo finds 535.261.03" in stale["reason"]


def test_secure_boot_needs_a_signed_module():
    after = host(debian_cuda("580.95.05"), module=module("580.95.05", signed=False), secure_boot=True)
    result = activation(plan_for(mok=True), after, NO_DRIVER, changed=True)
    assert not result["ok"] and "not signed" in result["reason"]
    signed = activation(plan_for(mok=True), dict(after, module=module("580.95.05", signed=True)), NO_DRIVER, changed=True)
    assert signed["ok"] and signed["reboot"]


def test_packages_not_what_was_asked_after_the_install():
    after = host(debian_cuda("590.44.01"), module=module("590.44.01"))
    result = activation(plan_for(), after, NO_DRIVER, changed=True)
    assert not result["ok"] and "590.44.01 (open kernel module), not branch 580" in result["reason"]


def test_fabric_manager_version_must_match_after_the_install():
    plan = plan_driver(host(pci={"gpus": ["0x2330"], "nvswitch": True}), NO_DRIVER, DEBIAN12, {})
    packages = dict(debian_cuda("580.95.05"), **{"nvidia-fabricmanager-580": "580.82.07-1"})
    result = activation(plan, host(packages, module=module("580.95.05")), NO_DRIVER, changed=True)
    assert not result["ok"] and "Fabric Manager is at 580.82.07 but the driver at 580.95.05" in result["reason"]


def test_bad_reboot_mode():
    with pytest.raises(DriverPolicyError, match="nvidia_driver_reboot=sometimes"):
        activation(plan_for(), host(debian_cuda("580.95.05")), NO_DRIVER, changed=True, reboot_mode="sometimes")


# --- after the reboot ---------------------------------------------------------------------------------

def test_after_the_reboot_the_wanted_driver_is_loaded():
    after = host(debian_cuda("580.95.05"))
    assert verify_loaded(plan_for(), after, smi_facts(h100_smi("580.95.05")))["ok"]


@pytest.mark.parametrize("smi,proc,message", [
    ({"*": (9, NOT_LOADED)}, None, "nvidia-smi says driver_not_loaded"),
    (h100_smi("535.261.03"), None, "driver 535.261.03 (unknown kernel module) is loaded, but 580.95.05"),
    (h100_smi("580.95.05"), "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Release Build\n",
     "driver 580.95.05 (proprietary kernel module) is loaded"),
])
def test_after_the_reboot_a_wrong_driver_is_named(smi, proc, message):
    after = host(debian_cuda("580.95.05"), loaded=loaded_driver(proc))
    result = verify_loaded(plan_for(), after, smi_facts(smi, proc), hostname="gpu-7")
    assert not result["ok"] and message in result["reason"] and "host gpu-7" in result["reason"]


# --- the real H100 host (tests/fixtures/real_h100/check_driver*.txt, from tests/realgpu/run_check.sh) ----

def probe_sections(path):
    sections, name = {}, None
    with open(path) as handle:
        for line in handle.read().splitlines():
            if line.startswith("### rc="):
                name = None
            elif line.startswith("### "):
                name = line[4:]
                sections[name] = []
            elif name:
                sections[name].append(line)
    return {k: "\n".join(v) + "\n" for k, v in sections.items()}


def test_real_h100_host_probes_give_an_untouched_plan():
    """What the driver role read on the real host, re-read from the probes: CUDA toolkit packages
    (cuda-compat-13-0 at 580.95.05 among them) are no driver, the driver is the mounted one."""
    from ansible_collections.gpufleet.serving.plugins.module_utils import driver_host
    probes = probe_sections(os.path.join(FIXTURES, "check_driver_probes.txt"))
    dpkg = next(v for k, v in probes.items() if k.startswith("dpkg-query"))
    packages, held = driver_host.parse_dpkg(dpkg)
    assert "cuda-compat-13-0\t580.95.05-0ubuntu1" in dpkg and packages == {} and held == []
    pci = next(v for k, v in probes.items() if k.startswith("for d in /sys/bus/pci"))
    devices = [("0x10de", line.split()[1], line.split()[2]) for line in pci.splitlines() if line.strip()]
    facts = host(loaded=loaded_driver(probes["cat /proc/driver/nvidia/version"]),
                 pci=driver_host.scan_pci(devices), kernel="6.18.44-fc-v657-gpu")
    plan = plan_driver(facts, gpu_facts("h100", driver="580.159.04"), UBUNTU2404,
                       {"branch": "580", "kernel_module": "open"})
    assert plan["action"] == "none" and not plan["manage"] and plan["want"]["architecture"] == "hopper"


def test_real_h100_check_mode_run_changed_nothing():
    with open(os.path.join(FIXTURES, "check_driver.txt")) as handle:
        output = handle.read()
    assert "localhost                  : ok=8    changed=0    unreachable=0    failed=0" in output
    assert "### ansible-playbook --check --diff exit code: 0" in output
    assert "none: branch 580 (open modules, ubuntu2404, source cuda)" in output
