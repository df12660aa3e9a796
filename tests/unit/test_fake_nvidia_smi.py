"""The lab's fake nvidia-smi, run as a subprocess the way lab hosts run it."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import nvidia_smi as smi

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(REPO, "lab", "fake-nvidia-smi", "nvidia-smi")
GPUS = os.path.join(REPO, "lab", "gpus")
H100 = os.path.join(GPUS, "h100-80gb-hbm3")

# profile: (GPU count, name, memory.total MiB, compute_cap, driver)
PROFILES = {
    "h100-80gb-hbm3": (1, "NVIDIA H100 80GB HBM3", 81559, "9.0", "580.159.04"),
    "h100x8": (8, "NVIDIA H100 80GB HBM3", 81559, "9.0", "580.159.04"),
    "rtx4000": (1, "Quadro RTX 4000", 8192, "7.5", "580.95.05"),
    "rtx5090": (1, "NVIDIA GeForce RTX 5090", 32607, "12.0", "580.95.05"),
    "l40s": (1, "NVIDIA L40S", 46068, "8.9", "580.95.05"),
    "l40sx2": (2, "NVIDIA L40S", 46068, "8.9", "580.95.05"),
}


def read(*parts):
    with open(os.path.join(*parts)) as handle:
        return handle.read()


def fake(*args, profile="h100-80gb-hbm3", state_dir="/nonexistent", gpu_dir=GPUS):
    env = dict(os.environ, GPUFLEET_FAKE_GPU_DIR=gpu_dir, GPUFLEET_FAKE_STATE_DIR=str(state_dir))
    env.pop("GPUFLEET_FAKE_GPU_PROFILE", None)
    if profile:
        env["GPUFLEET_FAKE_GPU_PROFILE"] = profile
    # Run with the test's interpreter: lab hosts use python3 through the shebang.
    return subprocess.run([sys.executable, FAKE] + list(args), capture_output=True, text=True, env=env, check=False)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_answers_the_module_query(profile):
    count, name, memory, cc, driver = PROFILES[profile]
    done = fake(*smi.QUERY_ARGS, profile=profile)
    assert done.returncode == 0, done.stdout + done.stderr
    gpus = smi.parse_query_gpu(done.stdout)
    assert [g["index"] for g in gpus] == list(range(count))
    assert {(g["name"], g["memory_mib"], g["compute_capability"], g["driver_version"]) for g in gpus} == {
        (name, memory, cc, driver)}
    assert len({g["uuid"] for g in gpus}) == len({g["pci_bus_id"] for g in gpus}) == count

    versions = smi.parse_version(fake("--version", profile=profile).stdout)
    assert versions == smi.parse_header(fake(profile=profile).stdout) == {"driver_version": driver,
                                                                          "cuda_version": "13.0"}
    listed = fake("-L", profile=profile).stdout.splitlines()
    assert listed == ["GPU %d: %s (UUID: %s)" % (g["index"], name, g["uuid"]) for g in gpus]
    assert smi.parse_topo_nvlink(fake("topo", "-m", profile=profile).stdout) is (profile == "h100x8")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_memory_adds_up(profile):
    shared = json.loads(read(GPUS, profile, "gpu.json"))["gpu"]
    total, reserved, used, free = (int(shared["memory." + k].split()[0]) for k in ("total", "reserved", "used", "free"))
    assert total - reserved - used == free


def test_real_captures_are_replayed_verbatim():
    for args, capture in [((), "nvidia-smi.txt"), (("-L",), "nvidia-smi-L.txt"), (("-q",), "nvidia-smi-q.txt"),
                          (("-q", "-x"), "nvidia-smi-q.xml"), (("--version",), "nvidia-smi-version.txt"),
                          (("topo", "-m"), "nvidia-smi-topo-m.txt"), (("--help-query-gpu",), "help-query-gpu.txt")]:
        assert fake(*args).stdout == read(H100, capture), args


def test_rendered_table_matches_the_real_layout(tmp_path):
    # The H100 profile without its captures renders from gpu.json: must equal the real table.
    os.makedirs(tmp_path / "h100-80gb-hbm3")
    shutil.copy(os.path.join(H100, "gpu.json"), tmp_path / "h100-80gb-hbm3")
    shutil.copy(os.path.join(H100, "help-query-gpu.txt"), tmp_path / "h100-80gb-hbm3")
    rendered = fake(gpu_dir=str(tmp_path))
    real = read(H100, "nvidia-smi.txt")
    assert re.match(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}       $", rendered.stdout.splitlines()[0])
    assert rendered.stdout.splitlines()[1:] == real.splitlines()[1:]
    assert fake("--version", gpu_dir=str(tmp_path)).stdout == read(H100, "nvidia-smi-version.txt")
    assert fake("-L", gpu_dir=str(tmp_path)).stdout == read(H100, "nvidia-smi-L.txt")
    real_q = set(read(H100, "nvidia-smi-q.txt").splitlines())
    rendered_q = fake("-q", gpu_dir=str(tmp_path)).stdout.splitlines()
    # Every rendered -q line is a real one, but the clock and the temperature (-q was read a moment later).
    assert [line for line in rendered_q if line not in real_q and "Timestamp" not in line] == [
        "        GPU Current Temp                               : 40 C"]


def test_query_header_units_and_aliases_like_the_real_tool():
    fields = "gpu_name,memory.total,clocks.sm,power.limit,utilization.gpu,temperature.gpu,fan.speed,count"
    done = fake("--query-gpu=" + fields, "--format=csv")
    assert done.stdout.splitlines() == [
        "name, memory.total [MiB], clocks.current.sm [MHz], power.limit [W], utilization.gpu [%], temperature.gpu, "
        "fan.speed [%], count",
        "NVIDIA H100 80GB HBM3, 81559 MiB, 420 MHz, 700.00 W, 0 %, 40, [N/A], 1",
    ]
    assert fake("--query-gpu=" + fields, "--format=csv,nounits").stdout.splitlines()[1] == (
        "NVIDIA H100 80GB HBM3, 81559, 420, 700.00, 0, 40, [N/A], 1")
    assert fake("--query-gpu=timestamp", "--format=csv,noheader").stdout.strip().count(":") == 2


def test_query_accepts_every_documented_field():
    names = re.findall(r'^"([^"]+)"(?: or "[^"]+")?$', read(H100, "help-query-gpu.txt"), re.M)
    done = fake("--query-gpu=" + ",".join(names), "--format=csv,noheader", profile="l40sx2")
    assert done.returncode == 0, done.stdout
    assert [len(line.split(", ")) for line in done.stdout.splitlines()] == [len(names)] * 2


def test_query_errors_like_the_real_tool():
    done = fake("--query-gpu=name,bogus.field", "--format=csv")
    assert (done.returncode, done.stdout) == (2, 'Field "bogus.field" is not a valid field to query.\n\n')
    done = fake("--query-gpu=name", "--format=json")
    assert (done.returncode, done.stdout) == (2, "Format modifier is not recognized.\n")
    done = fake("--bogus-flag")
    assert done.returncode == 255 and "not recognized" in done.stdout


def test_index_filter():
    done = fake("--query-gpu=index,pci.bus_id", "--format=csv,noheader", "-i", "5", profile="h100x8")
    assert done.stdout == "5, 00000000:AB:00.0\n"
    table = fake("-i", "1", profile="l40sx2").stdout
    assert "00000000:CA:00.0" in table and "00000000:4B:00.0" not in table
    done = fake("--query-gpu=name", "--format=csv", "-i", "3")
    assert (done.returncode, done.stdout) == (6, "No devices were found\n")
    assert fake("-L", "-i", "0").returncode == 2


def test_rendered_q_and_unsupported_xml():
    done = fake("-q", profile="rtx5090")
    assert "    Product Name                                       : NVIDIA GeForce RTX 5090" in done.stdout
    assert "        Total                                          : 32607 MiB" in done.stdout
    done = fake("-q", "-x", profile="rtx5090")
    assert done.returncode == 2 and "no -q -x capture" in done.stderr


def test_failure_states(tmp_path):
    (tmp_path / "driver-state").write_text("not_loaded\n")
    done = fake(*smi.QUERY_ARGS, state_dir=tmp_path)
    assert done.returncode == 9
    assert done.stdout.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                                  "Make sure that the latest NVIDIA driver is installed and running.\n")
    assert smi.classify_failure(done.returncode, done.stdout)[0] == "driver_not_loaded"

    (tmp_path / "driver-state").write_text("no_gpu\n")
    done = fake(*smi.QUERY_ARGS, state_dir=tmp_path)
    assert (done.returncode, done.stdout) == (6, "No devices were found\n")


def test_profile_from_state_file(tmp_path):
    (tmp_path / "gpu").write_text("rtx5090\n")
    assert "RTX 5090" in fake("-L", profile=None, state_dir=tmp_path).stdout
    done = fake("-L", profile=None, state_dir=tmp_path / "missing")
    assert done.returncode == 255 and "no GPU profile" in done.stderr


def run_fake(gpu_dir, profile):
    def run(argv):
        done = fake(*argv[1:], profile=profile, gpu_dir=gpu_dir)
        return done.returncode, done.stdout, done.stderr
    return run


def test_mig_profile_reads_back_as_its_mig_devices():
    """lab/gpus/h100-mig: the MIG devices of gpu.json come back through -L, the table and mig -lgi/-lci."""
    profile = json.loads(read(GPUS, "h100-mig", "gpu.json"))
    facts, warnings = smi.collect(FAKE, run_fake(GPUS, "h100-mig"), lambda path: read(H100, "host.txt"))
    assert warnings == [] and facts["state"] == "healthy"
    assert (facts["gpus"][0]["mig_mode"], facts["gpus"][0]["mig_mode_pending"]) == ("Enabled", "Enabled")
    assert [(d["uuid"], d["profile"], d["gi"], d["ci"], d["memory_mib"], d["sm_count"]) for d in facts["mig_devices"]] == [
        (d["uuid"], d["profile"], d["gi"], d["ci"], d["memory_mib"], d["sm"]) for d in profile["mig_devices"]]
    lgi = smi.parse_mig_gpu_instances(fake("mig", "-lgi", profile="h100-mig").stdout)
    assert [(i["gi"], i["profile_id"], i["placement"]) for i in lgi] == [
        (d["gi"], d["gi_profile_id"], d["gi_placement"]) for d in profile["mig_devices"]]
    lci = fake("mig", "-lci", profile="h100-mig").stdout
    assert "| Compute instances:" in lci and lci.count("MIG ") == len(profile["mig_devices"])


def test_mig_enabled_without_devices_and_pending(tmp_path):
    """A MIG GPU with no instance yet, and a GPU whose MIG mode changes at the next reset."""
    profile = json.loads(read(GPUS, "h100-mig", "gpu.json"))
    profile["mig_devices"] = []
    profile["gpus"].append(dict(profile["gpus"][0], index="1", uuid="GPU-0c4e2a19-7f3b-4d61-9a8e-5b2c1d0f7e93",
                                **{"pci.bus_id": "00000000:00:07.0", "mig.mode.current": "Disabled",
                                   "mig.mode.pending": "Enabled"}))
    profile["topology"] = {"link": "NV18", "cpu_affinity": ["0-15", "0-15"], "numa_affinity": ["0", "0"]}
    os.makedirs(tmp_path / "h100-mig")
    (tmp_path / "h100-mig" / "gpu.json").write_text(json.dumps(profile))
    os.makedirs(tmp_path / "h100-80gb-hbm3")
    shutil.copy(os.path.join(H100, "help-query-gpu.txt"), tmp_path / "h100-80gb-hbm3")
    facts, warnings = smi.collect(FAKE, run_fake(str(tmp_path), "h100-mig"), lambda path: read(H100, "host.txt"))
    assert facts["mig_devices"] == [] and facts["mig_gpu_instances"] == []   # -lgi: none found, rc 6
    assert facts["mig_pending"] == [{"gpu": 1, "current": "Disabled", "pending": "Enabled"}]
    assert warnings == ["GPU 1: MIG mode is Disabled now and Enabled after the next GPU reset or reboot "
                        "(nvidia-smi -i 1 -r, or reboot); plans follow the current mode"]
    assert "No MIG devices found" in fake(profile="h100-mig", gpu_dir=str(tmp_path)).stdout
