"""Parsers of the host's driver state (what gpufleet.serving.nvidia_driver_facts reads)."""
import os

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import driver_host

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "real_h100")

MODINFO_OPEN_SIGNED = """filename:       /lib/modules/6.8.0-45-generic/updates/dkms/nvidia.ko.zst
import_ns:      DMA_BUF
alias:          char-major-195-*
version:        580.95.05
supported:      external
license:        Dual MIT/GPL
firmware:       nvidia/580.95.05/gsp_ga10x.bin
srcversion:     5A2A6B8A0C3E0B1C8A7C1D2
vermagic:       6.8.0-45-generic SMP preempt mod_unload modversions
signer:         gpufleet fleet MOK
sig_key:        1A:2B:3C
sig_hashalgo:   sha512
parm:           NvSwitchRegDwords:NvSwitch regkey (charp)
"""
MODINFO_PROPRIETARY = """filename:       /lib/modules/6.1.0-28-amd64/updates/dkms/nvidia.ko
alias:          char-major-195-*
version:        535.261.03
supported:      external
license:        NVIDIA
vermagic:       6.1.0-28-amd64 SMP preempt mod_unload modversions
"""


def test_dpkg_keeps_installed_driver_packages_and_holds():
    text = ("nvidia-driver-580-open\t580.95.05-0ubuntu1\thi \n"
            "libnvidia-compute-580\t580.95.05-0ubuntu1\tii \n"
            "nvidia-dkms-535\t535.274.02-0ubuntu1\trc \n"        # removed, config left: not installed
            "nvidia-container-toolkit\t1.17.8-1\thi \n"           # the toolkit's role owns it
            "openssh-server\t1:9.6p1-3ubuntu13\tii \n")
    packages, held = driver_host.parse_dpkg(text)
    assert packages == {"nvidia-driver-580-open": "580.95.05-0ubuntu1", "libnvidia-compute-580": "580.95.05-0ubuntu1"}
    assert held == ["nvidia-driver-580-open"]


def test_rpm_and_versionlock():
    packages = driver_host.parse_rpm("nvidia-driver-cuda-libs\t580.95.05-1.el9\nkernel\t5.14.0-427.el9\n"
                                     "kmod-nvidia-open-dkms\t580.95.05-1.el9\n")
    assert packages == {"nvidia-driver-cuda-libs": "580.95.05-1.el9", "kmod-nvidia-open-dkms": "580.95.05-1.el9"}
    lock = "# Added lock on Mon\nnvidia-driver-cuda-libs-3:580.95.05-1.el9.*\nkmod-nvidia-open-dkms-3:580.95.05-1.el9.*\n"
    assert driver_host.parse_versionlock(lock) == ["kmod-nvidia-open-dkms", "nvidia-driver-cuda-libs"]


def test_proc_version_of_the_real_h100_host():
    with open(os.path.join(FIXTURES, "proc-driver-nvidia-version.txt")) as handle:
        assert driver_host.parse_proc_version(handle.read()) == {"version": "580.159.04", "open": True}


def test_proc_version_proprietary():
    text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\nGCC version: 12\n"
    assert driver_host.parse_proc_version(text) == {"version": "535.183.01", "open": False}
    assert driver_host.parse_proc_version("") is None


def test_modinfo_says_version_flavour_and_signature():
    assert driver_host.parse_modinfo(MODINFO_OPEN_SIGNED) == {"version": "580.95.05", "open": True, "signed": True}
    assert driver_host.parse_modinfo(MODINFO_PROPRIETARY) == {"version": "535.261.03", "open": False, "signed": False}
    assert driver_host.parse_modinfo("modinfo: ERROR: Module nvidia not found.\n") is None


@pytest.mark.parametrize("mokutil,efivar,expected", [
    ("SecureBoot enabled\n", None, True),
    ("SecureBoot disabled\n", None, False),
    ("EFI variables are not supported on this system\n", None, False),
    (None, b"\x06\x00\x00\x00\x01", True),   # attributes, then the value byte
    (None, b"\x06\x00\x00\x00\x00", False),
    (None, None, False),                     # no EFI at all: legacy boot, no Secure Boot
])
def test_secure_boot(mokutil, efivar, expected):
    assert driver_host.parse_secure_boot(mokutil, efivar) is expected


def test_mok_enrolment():
    assert driver_host.parse_mok_test_key("/var/lib/dkms/mok.pub is already enrolled\n") is True
    assert driver_host.parse_mok_test_key("/var/lib/dkms/mok.pub is not enrolled\n") is False
    assert driver_host.parse_mok_test_key("") is None


def test_pci_scan_finds_gpus_and_nvswitches():
    devices = [("0x8086", "0x0d57", "0x060000"), ("0x1af4", "0x1042", "0x018000"),   # this lab VM: no NVIDIA
               ("0x10de\n", "0x2330\n", "0x030200\n"),                              # H100 SXM (3D controller)
               ("0x10de", "0x2b85", "0x030000"),                                     # RTX 5090 (VGA)
               ("0x10de", "0x22a3", "0x068000"),                                     # NVSwitch (other bridge)
               ("0x10de", "0x22e8", "0x040300")]                                     # its HDMI audio function
    assert driver_host.scan_pci(devices) == {"gpus": ["0x2330", "0x2b85"], "nvswitch": True}
    assert driver_host.scan_pci(devices[:2]) == {"gpus": [], "nvswitch": False}


def test_loaded_driver_prefers_the_proc_file():
    with open(os.path.join(FIXTURES, "proc-driver-nvidia-version.txt")) as handle:
        assert driver_host.loaded_driver(handle.read(), "580.159.04\n") == {"version": "580.159.04", "open": True}
    assert driver_host.loaded_driver(None, "535.261.03\n") == {"version": "535.261.03", "open": None}
    assert driver_host.loaded_driver(None, None) is None


def test_loaded_modules():
    text = "nouveau 2904064 0 - Live 0x0000000000000000\nvirtio_net 65536 0 - Live 0x0\n"
    assert driver_host.parse_modules(text) == ["nouveau", "virtio_net"]
