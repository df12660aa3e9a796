"""State of the lab host after converge (580), idempotence and the 580 -> 535 side effect."""
import json

testinfra_hosts = ["ansible://gpu_hosts"]

DRIVER = "535.261.03"
HELD = ["firmware-nvidia-gsp", "libcuda1", "libnvidia-ml1", "libnvidia-nscq-535", "nvidia-driver-cuda",
        "nvidia-fabricmanager-535", "nvidia-kernel-open-dkms", "nvidia-persistenced", "nvidia-smi"]


def installed(host):
    out = host.check_output("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n'")
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[2].startswith(("ii", "hi"))}


def test_driver_packages_at_the_branch_and_held(host):
    packages = installed(host)
    for name in HELD:
        assert packages[name] == DRIVER + "-1", name
    assert sorted(host.check_output("apt-mark showhold").split()) == HELD
    assert "nvidia-fabricmanager-580" not in packages and "libnvidia-nscq-580" not in packages
    assert "nvidia-kernel-dkms" not in packages


def test_kernel_headers_for_the_running_kernel_and_dkms(host):
    kernel = host.check_output("uname -r")
    assert host.package("linux-headers-" + kernel).is_installed
    assert host.package("dkms").is_installed  # Debian's real dkms


def test_branch_pin_keeps_apt_off_the_newer_branch(host):
    # The stand-in repository also has 580.95.05 and 590.44.01: the pin keeps 535 the candidate.
    policy = host.check_output("apt-cache policy nvidia-driver-cuda")
    assert "580.95.05-1" in policy and "590.44.01-1" in policy
    assert "Candidate: %s-1" % DRIVER in policy
    pin = host.file("/etc/apt/preferences.d/gpufleet-nvidia-driver").content_string
    assert "Pin: version 535.*" in pin and "Pin-Priority: 1001" in pin


def test_repository_is_signed_by_its_key(host):
    sources = host.file("/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources").content_string
    assert "URIs: http://gpufleet-drv-repo/cuda/debian12/x86_64/" in sources
    assert "Signed-By: /usr/share/keyrings/gpufleet-nvidia-cuda.asc" in sources
    assert "BEGIN PGP PUBLIC KEY BLOCK" in host.file("/usr/share/keyrings/gpufleet-nvidia-cuda.asc").content_string


def test_nouveau_blacklisted_and_unattended_upgrades_kept_off(host):
    blacklist = host.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf").content_string
    assert "blacklist nouveau" in blacklist and "options nouveau modeset=0" in blacklist
    unattended = host.file("/etc/apt/apt.conf.d/51gpufleet-nvidia-driver").content_string
    assert "Unattended-Upgrade::Package-Blacklist" in unattended and '"libnvidia-";' in unattended


def test_module_for_the_running_kernel_and_loaded_driver(host):
    kernel = host.check_output("uname -r")
    assert host.check_output("modinfo -k %s -F version nvidia" % kernel) == DRIVER
    assert host.check_output("modinfo -k %s -F license nvidia" % kernel) == "Dual MIT/GPL"
    # The (simulated) boot loaded it: nvidia-smi reports it.
    assert host.check_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader") == DRIVER
    assert json.loads(host.file("/usr/share/gpufleet-lab/gpus/lab-booted/gpu.json").content_string)["kernel_module"] == "open"


def test_driver_services_enabled_and_running(host):
    for name in ("nvidia-persistenced", "nvidia-fabricmanager"):
        service = host.service(name)
        assert service.is_enabled and service.is_running, name
