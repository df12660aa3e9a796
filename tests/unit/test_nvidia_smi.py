"""Parsing nvidia-smi output: real H100 captures, the real-GPU run, failure texts, malformed output."""
import json
import os

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import nvidia_smi as smi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURE = os.path.join(REPO, "lab", "gpus", "h100-80gb-hbm3")  # copy of the real reference capture
REAL_RUN = os.path.join(REPO, "tests", "fixtures", "real_h100")

H100_LINE = ("0, GPU-9e69fcbc-962a-e3ab-6d85-0e453726a4e8, NVIDIA H100 80GB HBM3, 81559, 9.0, 00000000:00:06.0, "
             "Disabled, 580.159.04")
NOT_LOADED = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
              "Make sure that the latest NVIDIA driver is installed and running.\n\n")


def text(*parts):
    with open(os.path.join(*parts)) as handle:
        return handle.read()


def test_query_line_of_real_h100():
    assert smi.parse_query_gpu(H100_LINE + "\n") == [{
        "index": 0, "uuid": "GPU-9e69fcbc-962a-e3ab-6d85-0e453726a4e8", "name": "NVIDIA H100 80GB HBM3",
        "memory_mib": 81559, "compute_capability": "9.0", "pci_bus_id": "00000000:00:06.0", "mig_mode": "Disabled",
        "driver_version": "580.159.04",
    }]


def test_query_na_mig_mode_is_bare_word():
    line = "0, GPU-e8a0dce1-5e5f-58c5-8c8f-fe2c4d4c406d, NVIDIA L40S, 46068, 8.9, 00000000:01:00.0, [N/A], 580.95.05"
    assert smi.parse_query_gpu(line)[0]["mig_mode"] == "N/A"


def test_version_and_banner_of_real_h100():
    expected = {"driver_version": "580.159.04", "cuda_version": "13.0"}
    assert smi.parse_version(text(CAPTURE, "nvidia-smi-version.txt")) == expected
    assert smi.parse_header(text(CAPTURE, "nvidia-smi.txt")) == expected


def test_cuda_not_found_is_none():
    version = "DRIVER version      : 580.105.06\nCUDA Version        : Not Found\n"
    assert smi.parse_version(version)["cuda_version"] is None
    banner = "| NVIDIA-SMI 575.64.03              Driver Version: 575.64.03      CUDA Version: N/A      |"
    assert smi.parse_header(banner) == {"driver_version": "575.64.03", "cuda_version": None}


def test_kernel_module_flavours():
    assert smi.parse_kernel_module(text(CAPTURE, "host.txt")) == "open"
    proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue Sep 23 09:55:41 UTC 2025\n"
    assert smi.parse_kernel_module(proprietary) == "proprietary"


@pytest.mark.parametrize("cc,arch", [
    ("7.0", "volta"), ("7.5", "turing"), ("8.0", "ampere"), ("8.6", "ampere"), ("8.7", "ampere"), ("8.9", "ada"),
    ("9.0", "hopper"), ("10.0", "blackwell"), ("10.3", "blackwell"), ("12.0", "blackwell"), ("12.1", "blackwell"),
    ("6.1", "unknown"),
])
def test_architecture(cc, arch):
    assert smi.architecture(cc) == arch


def test_topo_single_real_gpu_has_no_nvlink():
    # Real output underlines the header with ANSI escapes and spells "NV#" in the legend.
    topo = text(REAL_RUN, "topo-m.txt")
    assert "\x1b[4m" in topo and "NV#" in topo
    assert smi.parse_topo_nvlink(topo) is False


def test_topo_nvlink_and_pcie_matrices():
    nv = "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV12\t0-15\nGPU1\tNV12\t X \t0-15\n"
    assert smi.parse_topo_nvlink(nv) is True
    assert smi.parse_topo_nvlink(nv.replace("NV12", "PHB")) is False


@pytest.mark.parametrize("rc,output,state", [
    (9, NOT_LOADED, smi.DRIVER_NOT_LOADED),
    (18, "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.95\n",
     smi.DRIVER_NOT_LOADED),
    (6, "No devices were found\n", smi.NO_GPU),
    (12, "NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. Please make sure that the NVIDIA Display "
         "Driver is properly installed and present in your system.\n", smi.NO_DRIVER),
    (127, "nvidia-smi: command not found\n", smi.NO_DRIVER),
])
def test_classify_failure(rc, output, state):
    found, message = smi.classify_failure(rc, output)
    assert found == state
    assert message and "\n" not in message


def test_classify_failure_keeps_real_not_loaded_text():
    assert smi.classify_failure(9, NOT_LOADED)[1] == NOT_LOADED.strip()
    assert "reboot" in smi.classify_failure(18, "Failed to initialize NVML: Driver/library version mismatch")[1]


def test_unknown_failure_is_not_classified():
    assert smi.classify_failure(15, "Unable to determine the device handle for GPU0000:18:00.0: GPU is lost.") is None


@pytest.mark.parametrize("output,named", [
    (text(CAPTURE, "query-gpu-noheader.csv"), "has 5 fields, expected 8"),  # another query's real output
    ("index, uuid, name, memory.total [MiB], compute_cap, pci.bus_id, mig.mode.current, driver_version",
     "index 'index' is not a GPU index"),  # header not suppressed
    (H100_LINE.replace("81559", "81559 MiB"), "memory.total '81559 MiB'"),  # units not suppressed
    (H100_LINE.replace("81559", "[N/A]"), "memory.total '[N/A]'"),
    (H100_LINE.replace(" 9.0,", " [N/A],"), "compute_cap '[N/A]' is not MAJOR.MINOR"),
    (H100_LINE.replace("00000000:00:06.0", "bus"), "pci.bus_id 'bus'"),
    (H100_LINE.replace("GPU-9e69", "9e69"), "uuid '9e69"),
    (H100_LINE.replace("580.159.04", "ERR!"), "driver_version 'ERR!'"),
])
def test_malformed_query_names_the_problem(output, named):
    with pytest.raises(ValueError, match="line 1") as err:
        smi.parse_query_gpu(output)
    assert named in str(err.value)


@pytest.mark.parametrize("parser,output,named", [
    (smi.parse_version, "NVIDIA-SMI version  : 580.159.04\n", "DRIVER version"),
    (smi.parse_header, "Sun Nov 22 01:27:52 2026\n", "banner"),
    (smi.parse_topo_nvlink, "Legend:\n  NV#  = Connection traversing a bonded set of # NVLinks\n", "GPU0"),
    (smi.parse_kernel_module, "GCC version:  gcc version 15.3.0 (GCC)\n", "NVRM version"),
])
def test_malformed_other_outputs(parser, output, named):
    with pytest.raises(ValueError, match=named):
        parser(output)


class Runner:
    """Scripted nvidia-smi: answers by first argument, records the calls."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, argv):
        self.calls.append(argv[1:])
        if len(argv) > 1 and argv[1] in self.answers:  # e.g. the MIG pending-mode query
            return self.answers[argv[1]]
        return self.answers[argv[1].split("=")[0] if len(argv) > 1 else ""]


def no_proc(path):
    raise IOError(path)


PENDING = smi.MIG_PENDING_ARGS[0]


def test_collect_one_gpu_makes_two_calls():
    """A GPU without MIG support (mig.mode.current [N/A]) costs two calls and gets no MIG keys."""
    l40s = "0, GPU-e8a0dce1-5e5f-58c5-8c8f-fe2c4d4c406d, NVIDIA L40S, 46068, 8.9, 00000000:01:00.0, [N/A], 580.95.05"
    runner = Runner({"--query-gpu": (0, l40s + "\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), "")})
    facts, warnings = smi.collect("/usr/bin/nvidia-smi", runner, no_proc)
    assert [c[0] for c in runner.calls] == [smi.QUERY_ARGS[0], "--version"]
    assert warnings == [] and "mig_devices" not in facts and "mig_mode_pending" not in facts["gpus"][0]


def test_collect_mig_capable_gpu_reads_the_pending_mode():
    """An H100 with MIG disabled: one more query for the pending mode, no -L / table / -lgi."""
    runner = Runner({"--query-gpu": (0, H100_LINE + "\n", ""), PENDING: (0, "0, Disabled, Disabled\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), "")})
    facts, warnings = smi.collect("/usr/bin/nvidia-smi", runner, no_proc)
    assert [c[0] for c in runner.calls] == [smi.QUERY_ARGS[0], "--version", PENDING]
    assert warnings == []
    assert (facts["gpus"][0]["mig_mode"], facts["gpus"][0]["mig_mode_pending"]) == ("Disabled", "Disabled")
    assert (facts["mig_devices"], facts["mig_pending"]) == ([], [])
    assert facts["state"] == "healthy" and facts["kernel_module"] is None and facts["nvlink"] is False
    assert (facts["driver_version"], facts["cuda_version"], facts["architecture"]) == ("580.159.04", "13.0", "hopper")


def test_collect_falls_back_to_banner_and_tolerates_topo_failure():
    two = H100_LINE + "\n" + H100_LINE.replace("0, GPU-9e69", "1, GPU-9e70").replace(":06.0", ":07.0") + "\n"
    runner = Runner({"--query-gpu": (0, two, ""), "--version": (2, "ERROR: Option --version is not recognized.", ""),
                     "": (0, text(CAPTURE, "nvidia-smi.txt"), ""), "topo": (3, "", "Not supported"),
                     PENDING: (0, "0, Disabled, Disabled\n1, Disabled, Disabled\n", "")})
    facts, warnings = smi.collect("/usr/bin/nvidia-smi", runner, lambda p: text(CAPTURE, "host.txt"))
    assert len(runner.calls) == 5
    assert facts["cuda_version"] == "13.0" and facts["count"] == 2 and facts["nvlink"] is False
    assert facts["kernel_module"] == "open"
    assert "topo -m failed" in warnings[0]


def test_collect_mixed_gpus_uses_lowest_cc():
    l40s = "1, GPU-e8a0dce1, NVIDIA L40S, 46068, 8.9, 00000000:01:00.0, [N/A], 580.159.04"
    topo = "\tGPU0\tGPU1\nGPU0\t X \tSYS\nGPU1\tSYS\t X \n"
    runner = Runner({"--query-gpu": (0, H100_LINE + "\n" + l40s, ""), PENDING: (0, "0, Disabled, Disabled\n1, [N/A], [N/A]\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), ""), "topo": (0, topo, "")})
    facts, _unused = smi.collect("nvidia-smi", runner, no_proc)
    assert (facts["compute_capability"], facts["architecture"]) == ("8.9", "ada")
    assert (facts["memory_total_mib"], facts["memory_min_mib"], facts["homogeneous"]) == (81559 + 46068, 46068, False)


def test_collect_states_and_errors():
    facts, _unused = smi.collect(None, Runner({}), no_proc)
    assert facts["state"] == "no_driver" and facts["count"] == 0 and facts["gpus"] == []
    facts, _unused = smi.collect("nvidia-smi", Runner({"--query-gpu": (9, NOT_LOADED, "")}), no_proc)
    assert facts["state"] == "driver_not_loaded" and facts["message"].startswith("NVIDIA-SMI has failed")
    facts, _unused = smi.collect("nvidia-smi", Runner({"--query-gpu": (0, "", "")}), no_proc)
    assert facts["state"] == "no_gpu"
    with pytest.raises(smi.NvidiaSmiError, match="GPU is lost"):
        smi.collect("nvidia-smi", Runner({"--query-gpu": (15, "", "GPU is lost")}), no_proc)


def test_real_h100_run():
    """tests/fixtures/real_h100: what a real H100 host printed, and the facts collect.py made of it."""
    gpus = smi.parse_query_gpu(text(REAL_RUN, "query-gpu.csv"))
    versions = smi.parse_header(text(REAL_RUN, "nvidia-smi.txt"))
    nvlink = smi.parse_topo_nvlink(text(REAL_RUN, "topo-m.txt"))
    kernel_module = smi.parse_kernel_module(text(REAL_RUN, "proc-driver-nvidia-version.txt"))
    rebuilt = smi.build_facts(gpus, versions, nvlink, "/usr/local/nvidia/bin/nvidia-smi", kernel_module)

    recorded = json.loads(text(REAL_RUN, "facts.json"))
    assert recorded["gpufleet_gpu"] == rebuilt
    assert [c["argv"][0] for c in recorded["calls"]] == [smi.QUERY_ARGS[0], "--version"]
    assert rebuilt["state"] == "healthy" and rebuilt["count"] == 1
    assert (rebuilt["driver_version"], rebuilt["cuda_version"]) == ("580.159.04", "13.0")
    assert (rebuilt["compute_capability"], rebuilt["architecture"]) == ("9.0", "hopper")
    assert rebuilt["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert (rebuilt["memory_total_mib"], rebuilt["gpus"][0]["mig_mode"]) == (81559, "Disabled")
    assert (rebuilt["nvlink"], rebuilt["kernel_module"]) == (False, "open")
    compute = text(REAL_RUN, "nvidia-smi-q-d-compute.txt")
    assert "    Compute Mode                                       : Default" in compute


# --- MIG: public captures in NVIDIA's documented formats (MIG user guide, "Getting Started with MIG") ---------
# H100 80GB HBM3 split like mig-parted's all-balanced layout; `-L` from a public deployment note, the
# table from a public runbook (driver 535.104.12) of the same layout (two hosts: UUIDs are not shared).
H100_MIG_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4)
  MIG 3g.40gb     Device  0: (UUID: MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde)
  MIG 2g.20gb     Device  1: (UUID: MIG-56c30729-347f-5dd6-8da0-c3cc59e969e0)
  MIG 1g.10gb     Device  2: (UUID: MIG-9d14fb21-4ae1-546f-a636-011582899c39)
  MIG 1g.10gb     Device  3: (UUID: MIG-0f709664-740c-52b0-ae79-3e4c9ede6d3b)
"""
H100_MIG_TABLE = """\
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.12             Driver Version: 535.104.12   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |         Memory-Usage | GPU-Util  Compute M. |
|                                         |                      |               MIG M. |
|=========================================+======================+======================|
|   0  NVIDIA H100 80GB HBM3          On  | 00000000:8B:00.0 Off |                   On |
| N/A   51C    P0             140W / 700W |   1764MiB / 81559MiB |     N/A      Default |
|                                         |                      |              Enabled |
+-----------------------------------------+----------------------+----------------------+

+---------------------------------------------------------------------------------------+
| MIG devices:                                                                          |
+------------------+--------------------------------+-----------+-----------------------+
| GPU  GI  CI  MIG |                   Memory-Usage |        Vol|      Shared           |
|      ID  ID  Dev |                     BAR1-Usage | SM     Unc| CE ENC DEC OFA JPG    |
|                  |                                |        ECC|                       |
|==================+================================+===========+=======================|
|  0    2   0   0  |              37MiB / 40320MiB  | 60      0 |  3   0    3    0    3 |
|                  |               0MiB / 65535MiB  |           |                       |
+------------------+--------------------------------+-----------+-----------------------+
|  0    3   0   1  |              25MiB / 20096MiB  | 32      0 |  2   0    2    0    2 |
|                  |               0MiB / 32767MiB  |           |                       |
+------------------+--------------------------------+-----------+-----------------------+
|  0    9   0   2  |              12MiB /  9984MiB  | 16      0 |  1   0    1    0    1 |
|                  |               0MiB / 16383MiB  |           |                       |
+------------------+--------------------------------+-----------+-----------------------+
|  0   10   0   3  |            1688MiB /  9984MiB  | 16      0 |  1   0    1    0    1 |
|                  |               2MiB / 16383MiB  |           |                       |
+------------------+--------------------------------+-----------+-----------------------+
                                                                                         
+---------------------------------------------------------------------------------------+
| Processes:                                                                            |
|  GPU   GI   CI        PID   Type   Process name                            GPU Memory |
|        ID   ID                                                             Usage      |
|=======================================================================================|
|    0   10    0      51445      C   /usr/bin/python3                           1668MiB |
+---------------------------------------------------------------------------------------+
"""
# An A100 80GB with MIG enabled and no instance yet (public note, same table layout).
NO_MIG_DEVICES_TABLE = """\
+-----------------------------------------------------------------------------+
| MIG devices:                                                                |
+------------------+----------------------+-----------+-----------------------+
| GPU  GI  CI  MIG |         Memory-Usage |        Vol|         Shared        |
|      ID  ID  Dev |           BAR1-Usage | SM     Unc| CE  ENC  DEC  OFA  JPG|
|                  |                      |        ECC|                       |
|==================+======================+===========+=======================|
|  No MIG devices found                                                       |
+-----------------------------------------------------------------------------+
"""
# `nvidia-smi mig -i 0 -lgi` on an H100 80GB after -cgi 9,14 (public notes).
H100_LGI = """\
+---------------------------------------------------------+
| GPU instances:                                          |
| GPU   Name               Profile  Instance   Placement  |
|                            ID       ID       Start:Size |
|=========================================================|
|   0  MIG 2g.20gb           14        3          0:2     |
+---------------------------------------------------------+
|   0  MIG 3g.40gb            9        2          4:4     |
+---------------------------------------------------------+
"""
# `nvidia-smi -L` of a 2x H100 host with MIG on GPU 0 only (vLLM PR #41850).
MIXED_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-7f57f032-34ab-a064-c37c-7a4f75601cc5)
  MIG 2g.20gb     Device  0: (UUID: MIG-377e0049-554c-540b-93c6-d0976f8426cb)
  MIG 1g.10gb     Device  1: (UUID: MIG-f39aa248-6f1b-5769-b119-8d650bb34b27)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-8c7c9c30-f12f-20bf-e14e-d3c4c965af32)
"""
MIG_QUERY = "0, GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4, NVIDIA H100 80GB HBM3, 81559, 9.0, 00000000:8B:00.0, Enabled, 535.104.12\n"


def test_parse_list_mig_of_real_listings():
    assert smi.parse_list_mig(H100_MIG_L) == [
        {"gpu": 0, "device": 0, "profile": "3g.40gb", "uuid": "MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde"},
        {"gpu": 0, "device": 1, "profile": "2g.20gb", "uuid": "MIG-56c30729-347f-5dd6-8da0-c3cc59e969e0"},
        {"gpu": 0, "device": 2, "profile": "1g.10gb", "uuid": "MIG-9d14fb21-4ae1-546f-a636-011582899c39"},
        {"gpu": 0, "device": 3, "profile": "1g.10gb", "uuid": "MIG-0f709664-740c-52b0-ae79-3e4c9ede6d3b"}]
    assert [(d["gpu"], d["device"]) for d in smi.parse_list_mig(MIXED_L)] == [(0, 0), (0, 1)]
    assert smi.parse_list_mig(text(CAPTURE, "nvidia-smi-L.txt")) == []   # the real H100, MIG disabled
    with pytest.raises(ValueError, match="neither a GPU nor a MIG device"):
        smi.parse_list_mig("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n  Device 0 something\n")


def test_parse_mig_table_of_a_real_h100():
    assert smi.parse_mig_table(H100_MIG_TABLE) == {
        (0, 0): {"gi": 2, "ci": 0, "memory_mib": 40320, "sm_count": 60},
        (0, 1): {"gi": 3, "ci": 0, "memory_mib": 20096, "sm_count": 32},
        (0, 2): {"gi": 9, "ci": 0, "memory_mib": 9984, "sm_count": 16},
        (0, 3): {"gi": 10, "ci": 0, "memory_mib": 9984, "sm_count": 16}}
    assert smi.parse_mig_table(NO_MIG_DEVICES_TABLE) == {}
    with pytest.raises(ValueError, match="no 'MIG devices:' table"):
        smi.parse_mig_table(text(CAPTURE, "nvidia-smi.txt"))


def test_parse_lgi_and_pending_and_slices():
    assert smi.parse_mig_gpu_instances(H100_LGI) == [
        {"gpu": 0, "gi": 3, "profile": "2g.20gb", "profile_id": 14, "placement": "0:2"},
        {"gpu": 0, "gi": 2, "profile": "3g.40gb", "profile_id": 9, "placement": "4:4"}]
    with pytest.raises(ValueError, match="GPU instances"):
        smi.parse_mig_gpu_instances("No GPU instances found: Not Found\n")
    assert smi.parse_mig_pending("0, Disabled, Enabled\n1, [N/A], [N/A]\n") == {
        0: ("Disabled", "Enabled"), 1: ("N/A", "N/A")}
    assert [smi.compute_slices(p) for p in ("3g.40gb", "1g.10gb+me", "1c.3g.40gb", "7g.80gb", "bogus")] == [
        3, 1, 1, 7, None]


def test_collect_reads_the_mig_devices_of_a_real_h100():
    runner = Runner({"--query-gpu": (0, MIG_QUERY, ""), PENDING: (0, "0, Enabled, Enabled\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), ""),
                     "-L": (0, H100_MIG_L, ""), "": (0, H100_MIG_TABLE, "")})
    facts, warnings = smi.collect("/usr/bin/nvidia-smi", runner, no_proc)
    assert [c[0] if c else "" for c in runner.calls] == [smi.QUERY_ARGS[0], "--version", PENDING, "-L", ""]
    assert warnings == [] and facts["mig_pending"] == [] and "mig_gpu_instances" not in facts
    assert facts["gpus"][0]["mig_mode_pending"] == "Enabled"
    first, *_unused, last = facts["mig_devices"]
    assert first == {"index": 0, "gpu": 0, "device": 0, "uuid": "MIG-7089d0f3-293f-58c9-8f8c-5ea666eedbde",
                     "gpu_uuid": "GPU-b4895dbf-9350-2524-a89b-98161ddd9fe4", "profile": "3g.40gb",
                     "name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb", "gi": 2, "ci": 0, "memory_mib": 40320,
                     "sm_count": 60, "compute_slices": 3}
    assert (last["index"], last["gi"], last["profile"], last["memory_mib"]) == (3, 10, "1g.10gb", 9984)
    assert "MIG on GPU 0: 4 MIG device(s)" in facts["message"]


def test_collect_mig_enabled_without_devices_reads_gpu_instances():
    runner = Runner({"--query-gpu": (0, MIG_QUERY, ""), PENDING: (0, "0, Enabled, Enabled\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), ""),
                     "-L": (0, H100_MIG_L.splitlines()[0] + "\n", ""), "": (0, NO_MIG_DEVICES_TABLE, ""),
                     "mig": (0, H100_LGI, "")})
    facts, warnings = smi.collect("nvidia-smi", runner, no_proc)
    assert runner.calls[-1] == ["mig", "-lgi"] and facts["mig_devices"] == []
    assert [i["gi"] for i in facts["mig_gpu_instances"]] == [3, 2]
    # Listing GPU instances may need root: a refusal is a warning, the facts stay.
    runner.answers["mig"] = (4, "", "Insufficient Permissions")
    facts, warnings = smi.collect("nvidia-smi", runner, no_proc)
    assert "mig_gpu_instances" not in facts and "mig -lgi failed (rc=4)" in warnings[0]


def test_collect_reports_pending_mig_changes():
    runner = Runner({"--query-gpu": (0, H100_LINE + "\n", ""), PENDING: (0, "0, Disabled, Enabled\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), "")})
    facts, warnings = smi.collect("nvidia-smi", runner, no_proc)
    assert facts["mig_pending"] == [{"gpu": 0, "current": "Disabled", "pending": "Enabled"}]
    assert facts["gpus"][0]["mig_mode_pending"] == "Enabled" and facts["mig_devices"] == []
    assert "GPU 0 MIG Disabled, Enabled after a GPU reset" in facts["message"]
    assert warnings == ["GPU 0: MIG mode is Disabled now and Enabled after the next GPU reset or reboot "
                        "(nvidia-smi -i 0 -r, or reboot); plans follow the current mode"]


def test_collect_refuses_a_listing_that_disagrees_with_the_table():
    runner = Runner({"--query-gpu": (0, MIG_QUERY, ""), PENDING: (0, "0, Enabled, Enabled\n", ""),
                     "--version": (0, text(CAPTURE, "nvidia-smi-version.txt"), ""),
                     "-L": (0, H100_MIG_L, ""), "": (0, NO_MIG_DEVICES_TABLE, "")})
    with pytest.raises(ValueError, match="lists MIG device 0 of GPU 0"):
        smi.collect("nvidia-smi", runner, no_proc)
