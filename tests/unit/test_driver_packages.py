"""Per-OS driver package decisions: names, repository files, pins, holds (Ubuntu 22.04/24.04,
Debian 12/13, RHEL 9). Debian names were checked against deb.debian.org (bookworm/trixie)."""
import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import driver_packages as pkgs
from ansible_collections.gpufleet.serving.plugins.module_utils.driver_packages import DriverPackageError


def os_facts(dist, version, family=None):
    return {"distribution": dist, "distribution_version": version,
            "distribution_major_version": version.split(".")[0],
            "os_family": family or ("RedHat" if dist in ("RedHat", "Rocky", "AlmaLinux") else "Debian")}


@pytest.mark.parametrize("facts,platform", [
    (os_facts("Ubuntu", "22.04"), "ubuntu2204"), (os_facts("Ubuntu", "24.04"), "ubuntu2404"),
    (os_facts("Debian", "12.8"), "debian12"), (os_facts("Debian", "13.1"), "debian13"),
    (os_facts("RedHat", "9.4"), "rhel9"), (os_facts("Rocky", "9.5"), "rhel9"), (os_facts("AlmaLinux", "9.4"), "rhel9"),
])
def test_platforms(facts, platform):
    assert pkgs.platform_of(facts) == platform


@pytest.mark.parametrize("facts", [os_facts("Ubuntu", "20.04"), os_facts("Debian", "11.9"),
                                   os_facts("RedHat", "8.10"), os_facts("Fedora", "41", "RedHat"),
                                   os_facts("SLES", "15.6", "Suse")])
def test_unsupported_os_names_the_supported_ones(facts):
    with pytest.raises(DriverPackageError, match=r"is not supported by the driver role; supported: Ubuntu 22.04, "
                                                 r"Ubuntu 24.04, Debian 12, Debian 13, RHEL 9 family"):
        pkgs.platform_of(facts)


@pytest.mark.parametrize("platform,source,branch,open_modules,server,version,expected", [
    # Ubuntu's archive: the branch is in the name; -server is the datacenter build.
    ("ubuntu2404", "distro", "580", True, True, None, ["nvidia-driver-580-server-open"]),
    ("ubuntu2204", "distro", "535", False, True, None, ["nvidia-driver-535-server"]),
    ("ubuntu2404", "distro", "580", True, False, None, ["nvidia-driver-580-open"]),
    ("ubuntu2204", "distro", "570", True, True, "570.195.03", ["nvidia-driver-570-server-open=570.195.03-*"]),
    # NVIDIA's repository for Ubuntu has no -server build.
    ("ubuntu2404", "cuda", "580", True, True, None, ["nvidia-driver-580-open"]),
    ("ubuntu2204", "cuda", "535", False, True, None, ["nvidia-driver-535"]),
    # NVIDIA's repository for Debian: unversioned names, the branch as a version glob (and the apt pin).
    ("debian12", "cuda", "580", True, True, None,
     ["nvidia-driver-cuda=580.*", "nvidia-kernel-open-dkms=580.*", "nvidia-persistenced=580.*"]),
    ("debian13", "cuda", "535", False, True, "535.261.03",
     ["nvidia-driver-cuda=535.261.03-*", "nvidia-kernel-dkms=535.261.03-*", "nvidia-persistenced=535.261.03-*"]),
    # Debian's own archive: the compute-only set of the branch the release ships.
    ("debian12", "distro", "535", True, True, None,
     ["nvidia-open-kernel-dkms=535.*", "firmware-nvidia-gsp=535.*", "nvidia-smi=535.*", "libcuda1=535.*",
      "nvidia-persistenced"]),
    ("debian12", "distro", "535", False, True, None,
     ["nvidia-kernel-dkms=535.*", "nvidia-smi=535.*", "libcuda1=535.*", "nvidia-persistenced"]),
    ("debian13", "distro", "535", False, True, None,
     ["nvidia-tesla-535-kernel-dkms=535.*", "nvidia-tesla-535-smi=535.*", "libnvidia-tesla-535-cuda1=535.*",
      "nvidia-persistenced"]),
    # RHEL 9: NVIDIA's module streams.
    ("rhel9", "cuda", "580", True, True, None, ["@nvidia-driver:580-open"]),
    ("rhel9", "cuda", "535", False, True, None, ["@nvidia-driver:535-dkms"]),
    ("rhel9", "cuda", "580", True, True, "580.95.05", ["@nvidia-driver:580-open", "nvidia-driver-580.95.05"]),
])
def test_driver_packages(platform, source, branch, open_modules, server, version, expected):
    assert pkgs.driver_packages(platform, source, branch, open_modules, server=server, version=version) == expected


@pytest.mark.parametrize("platform,source,branch,open_modules,message", [
    ("debian12", "distro", "580", True, r"Debian 12's archive has no driver branch 580 \(it ships 535\); set "
                                        r"nvidia_driver_source=cuda"),
    ("debian13", "distro", "580", True, r"Debian 13's archive has no driver branch 580"),
    ("debian13", "distro", "535", True, r"Debian 13's archive has no open kernel module for branch 535"),
    ("rhel9", "distro", "580", True, r"RHEL has no NVIDIA driver packages of its own"),
    ("ubuntu2404", "ppa", "580", True, r"nvidia_driver_source=ppa; use one of cuda, distro"),
])
def test_no_package_set(platform, source, branch, open_modules, message):
    with pytest.raises(DriverPackageError, match=message):
        pkgs.driver_packages(platform, source, branch, open_modules)


def test_apt_repository_is_deb822_flat_and_signed():
    repo = pkgs.repo_files("ubuntu2404", "cuda", "x86_64")
    assert repo["url"] == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/"
    assert repo["key_url"] == repo["url"] + "3bf863cc.pub"
    assert repo["path"] == "/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources"
    assert repo["content"].splitlines()[1:] == [
        "Types: deb", "URIs: https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/",
        "Suites: /", "Signed-By: /usr/share/keyrings/gpufleet-nvidia-cuda.asc"]


def test_repository_for_arm_servers_and_a_mirror():
    repo = pkgs.repo_files("debian12", "cuda", "aarch64", base="http://mirror.local/cuda/", key_url="http://k/key.asc")
    assert repo["url"] == "http://mirror.local/cuda/debian12/sbsa/"
    assert repo["key_url"] == "http://k/key.asc"


def test_dnf_repository_checks_signatures_with_a_local_key():
    repo = pkgs.repo_files("rhel9", "cuda", "x86_64")
    assert repo["path"] == "/etc/yum.repos.d/gpufleet-nvidia-cuda.repo"
    assert repo["key_url"].endswith("/rhel9/x86_64/D42D0685.pub")
    assert "baseurl=https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/\n" in repo["content"]
    assert "gpgcheck=1\n" in repo["content"]
    assert "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-gpufleet-nvidia-cuda\n" in repo["content"]


def test_distro_source_needs_no_repository():
    assert pkgs.repo_files("debian12", "distro", "x86_64") is None


def test_unknown_cpu():
    with pytest.raises(DriverPackageError, match="ppc64le has no NVIDIA driver repository"):
        pkgs.repo_files("ubuntu2404", "cuda", "ppc64le")


def test_apt_pin_prefers_nvidia_and_keeps_the_branch():
    records = pkgs.apt_pin("debian12", "580").split("\n\n")
    assert records[0].splitlines()[-2:] == ["Pin: release o=Debian", "Pin-Priority: 100"]
    assert records[1].splitlines()[-2:] == ["Pin: version 580.*", "Pin-Priority: 1001"]
    assert "Pin: release o=Ubuntu" in pkgs.apt_pin("ubuntu2204", "535")
    assert "Pin: version 580.95.05-*" in pkgs.apt_pin("ubuntu2404", "580", "580.95.05")


def test_kernel_packages_for_the_running_kernel():
    assert pkgs.kernel_packages("ubuntu2404", "6.8.0-45-generic") == ["linux-headers-6.8.0-45-generic", "dkms"]
    assert pkgs.kernel_packages("debian12", "6.1.0-28-amd64") == ["linux-headers-6.1.0-28-amd64", "dkms"]
    assert pkgs.kernel_packages("rhel9", "5.14.0-427.el9.x86_64") == [
        "kernel-devel-5.14.0-427.el9.x86_64", "kernel-headers", "dkms"]


def test_initramfs_only_where_the_tool_exists():
    assert pkgs.initramfs_command("debian12", ["update-initramfs"]) == ["update-initramfs", "-u", "-k", "all"]
    assert pkgs.initramfs_command("rhel9", ["dracut"]) == ["dracut", "-f", "--regenerate-all"]
    assert pkgs.initramfs_command("debian12", []) is None  # a container


def test_fabric_manager_at_the_driver_version():
    assert pkgs.fabric_manager_packages("ubuntu2404", "580") == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert pkgs.fabric_manager_packages("debian12", "580", "580.95.05") == [
        "nvidia-fabricmanager-580=580.95.05-*", "libnvidia-nscq-580=580.95.05-*"]
    assert pkgs.fabric_manager_packages("rhel9", "580") == ["nvidia-fabric-manager-580*", "libnvidia-nscq-580*"]


def test_mok_paths_follow_the_distribution_dkms():
    assert pkgs.mok_paths("ubuntu2204")["key"] == "/var/lib/shim-signed/mok/MOK.priv"
    assert pkgs.mok_paths("debian12") == {"key": "/var/lib/dkms/mok.key", "cert": "/var/lib/dkms/mok.pub"}


@pytest.mark.parametrize("packages,expected", [
    ({"nvidia-driver-580-server-open": "580.95.05-0ubuntu0.24.04.2", "libnvidia-compute-580-server": "580.95.05-0ubuntu0.24.04.2",
      "nvidia-dkms-580-server-open": "580.95.05-0ubuntu0.24.04.2"}, ("580.95.05", "580", True)),
    ({"nvidia-driver-535": "535.274.02-0ubuntu1", "libnvidia-compute-535": "535.274.02-0ubuntu1",
      "nvidia-dkms-535": "535.274.02-0ubuntu1"}, ("535.274.02", "535", False)),
    ({"nvidia-driver-cuda": "580.95.05-1", "libcuda1": "580.95.05-1", "nvidia-kernel-open-dkms": "580.95.05-1"},
     ("580.95.05", "580", True)),
    ({"libcuda1": "535.261.03-1", "nvidia-open-kernel-dkms": "535.261.03-1", "nvidia-kernel-common": "20220217+3~deb12u1"},
     ("535.261.03", "535", True)),
    ({"libnvidia-tesla-535-cuda1": "535.274.02-1~deb13u1", "nvidia-tesla-535-kernel-dkms": "535.274.02-1~deb13u1"},
     ("535.274.02", "535", False)),
    ({"nvidia-driver-cuda-libs": "3:580.95.05-1.el9", "kmod-nvidia-open-dkms": "3:580.95.05-1.el9"},
     ("580.95.05", "580", True)),
    # Libraries without a kernel module package (e.g. Ubuntu's prebuilt linux-modules-nvidia): flavour unknown.
    ({"libnvidia-compute-580": "580.95.05-0ubuntu1"}, ("580.95.05", "580", None)),
])
def test_installed_driver(packages, expected):
    found = pkgs.installed_driver(packages)
    assert (found["version"], found["branch"], found["open"]) == expected


def test_no_driver_package_means_no_installed_driver():
    # The container toolkit alone is not a driver.
    assert pkgs.installed_driver({"nvidia-container-toolkit": "1.17.8-1", "libnvidia-container1": "1.17.8-1"}) is None


def test_holds_cover_the_branch_packages_only():
    packages = {"nvidia-driver-cuda": "580.95.05-1", "libcuda1": "580.95.05-1", "nvidia-fabricmanager-580": "580.95.05-1",
                "nvidia-kernel-common": "20220217+3~deb12u1", "nvidia-container-toolkit": "1.17.8-1",
                "libnvidia-container1": "1.17.8-1", "dkms": "3.0.10-8+deb12u1"}
    assert pkgs.hold_list(packages, "580") == ["libcuda1", "nvidia-driver-cuda", "nvidia-fabricmanager-580"]


def test_unattended_upgrades_blacklist():
    text = pkgs.unattended_upgrades_config()
    assert text.splitlines()[1] == "Unattended-Upgrade::Package-Blacklist {"
    assert '    "libnvidia-";' in text and text.endswith("};\n")


def test_version_of_package_versions():
    assert pkgs.version_of("1:580.95.05-0ubuntu0.24.04.2") == "580.95.05"
    assert pkgs.version_of("535.274.02-1~deb13u1") == "535.274.02"
    assert pkgs.version_of("580.95.05") == "580.95.05"
