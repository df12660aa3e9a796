"""gpufleet.serving.gpu_facts end to end: through real Ansible against the fake nvidia-smi, and in-process."""
import json
import os
import stat
import subprocess
import sys

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpufleet.serving.plugins.modules import gpu_facts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(REPO, "lab", "fake-nvidia-smi", "nvidia-smi")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
PROFILES = ["h100-80gb-hbm3", "h100x8", "rtx4000", "rtx5090", "l40s", "l40sx2", "h100-mig"]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
{tasks}
    - ansible.builtin.copy:
        dest: {out}
        content: "{{{{ {{{names}}} | to_json }}}}"
"""
TASK = """
    - gpufleet.serving.gpu_facts:
        nvidia_smi_path: {path}
        required: {required}
      environment:
        GPUFLEET_FAKE_GPU_PROFILE: {profile}
        GPUFLEET_FAKE_STATE_DIR: {state}
      check_mode: {check}
      register: {name}
      ignore_errors: true
"""


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """One ansible-playbook run with a task per scenario; returns {scenario: registered result}."""
    tmp = tmp_path_factory.mktemp("play")
    for state in ("not_loaded", "no_gpu"):
        os.makedirs(tmp / state)
        (tmp / state / "driver-state").write_text(state + "\n")
    scenarios = {p.replace("-", "_"): dict(profile=p, path=FAKE, state=tmp / "none", required=False, check=False)
                 for p in PROFILES}
    scenarios.update(
        check_mode=dict(profile="l40s", path=FAKE, state=tmp / "none", required=True, check=True),
        not_loaded=dict(profile="l40s", path=FAKE, state=tmp / "not_loaded", required=False, check=False),
        not_loaded_required=dict(profile="l40s", path=FAKE, state=tmp / "not_loaded", required=True, check=False),
        no_gpu=dict(profile="l40s", path=FAKE, state=tmp / "no_gpu", required=False, check=False),
        no_driver=dict(profile="l40s", path=tmp / "absent" / "nvidia-smi", state=tmp / "none", required=False,
                       check=False),
    )
    (tmp / "play.yml").write_text(PLAYBOOK.format(
        tasks="".join(TASK.format(name=name, **s) for name, s in scenarios.items()),
        out=tmp / "results.json", names=", ".join("'%s': %s" % (n, n) for n in scenarios)))
    (tmp / "ansible.cfg").write_text("")  # keep the checkout's ansible.cfg and inventory out of it
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"),
               GPUFLEET_FAKE_GPU_DIR=os.path.join(REPO, "lab", "gpus"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    done = subprocess.run([ANSIBLE_PLAYBOOK, str(tmp / "play.yml")], capture_output=True, text=True, env=env,
                          cwd=str(tmp), check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((tmp / "results.json").read_text())


def facts(result):
    return result["ansible_facts"]["gpufleet_gpu"]


def test_ansible_h100_single(played):
    result = played["h100_80gb_hbm3"]
    assert result["changed"] is False and not result.get("failed")
    assert facts(result) == {
        "state": "healthy", "message": "1 x NVIDIA H100 80GB HBM3, driver 580.159.04, CUDA 13.0",
        "nvidia_smi_path": FAKE, "driver_version": "580.159.04", "cuda_version": "13.0", "count": 1,
        "gpus": [{"index": 0, "uuid": "GPU-9e69fcbc-962a-e3ab-6d85-0e453726a4e8", "name": "NVIDIA H100 80GB HBM3",
                  "memory_mib": 81559, "compute_capability": "9.0", "pci_bus_id": "00000000:00:06.0",
                  "mig_mode": "Disabled", "mig_mode_pending": "Disabled"}],
        "compute_capability": "9.0", "architecture": "hopper", "memory_total_mib": 81559, "memory_min_mib": 81559,
        "homogeneous": True, "nvlink": False, "kernel_module": None, "mig_devices": [], "mig_pending": [],
    }


def test_ansible_h100_mig(played):
    """A MIG host: its MIG devices (UUID, profile, GI/CI, memory, SMs) in the facts."""
    result = played["h100_mig"]
    assert result["changed"] is False and not result.get("failed")
    gpu = facts(result)
    assert (gpu["gpus"][0]["mig_mode"], gpu["gpus"][0]["mig_mode_pending"], gpu["mig_pending"]) == (
        "Enabled", "Enabled", [])
    profile = json.loads(open(os.path.join(REPO, "lab", "gpus", "h100-mig", "gpu.json")).read())
    assert [(d["index"], d["uuid"], d["profile"], d["gi"], d["memory_mib"], d["sm_count"]) for d in gpu["mig_devices"]] == [
        (i, d["uuid"], d["profile"], d["gi"], d["memory_mib"], d["sm"]) for i, d in enumerate(profile["mig_devices"])]
    assert all(d["gpu_uuid"] == gpu["gpus"][0]["uuid"] for d in gpu["mig_devices"])


def test_ansible_h100x8_nvlink(played):
    gpu = facts(played["h100x8"])
    assert (gpu["count"], gpu["nvlink"], gpu["homogeneous"], gpu["architecture"]) == (8, True, True, "hopper")
    assert (gpu["memory_total_mib"], gpu["memory_min_mib"]) == (8 * 81559, 81559)
    assert [g["index"] for g in gpu["gpus"]] == list(range(8))


def test_ansible_l40sx2_pcie(played):
    gpu = facts(played["l40sx2"])
    assert (gpu["count"], gpu["nvlink"], gpu["compute_capability"], gpu["architecture"]) == (2, False, "8.9", "ada")
    assert (gpu["memory_total_mib"], gpu["driver_version"]) == (2 * 46068, "580.95.05")
    assert {g["mig_mode"] for g in gpu["gpus"]} == {"N/A"}


@pytest.mark.parametrize("scenario,cc,arch,memory", [
    ("rtx4000", "7.5", "turing", 8192), ("rtx5090", "12.0", "blackwell", 32607), ("l40s", "8.9", "ada", 46068),
])
def test_ansible_single_gpu_profiles(played, scenario, cc, arch, memory):
    gpu = facts(played[scenario])
    assert (gpu["state"], gpu["count"], gpu["nvlink"]) == ("healthy", 1, False)
    assert (gpu["compute_capability"], gpu["architecture"], gpu["memory_total_mib"]) == (cc, arch, memory)
    assert (gpu["driver_version"], gpu["cuda_version"]) == ("580.95.05", "13.0")


def test_ansible_check_mode_reads_the_same(played):
    assert played["check_mode"]["changed"] is False and not played["check_mode"].get("failed")
    assert facts(played["check_mode"]) == facts(played["l40s"])


def test_ansible_unhealthy_states_do_not_fail_unless_required(played):
    for scenario, state in [("not_loaded", "driver_not_loaded"), ("no_gpu", "no_gpu"), ("no_driver", "no_driver")]:
        result = played[scenario]
        assert not result.get("failed"), scenario
        gpu = facts(result)
        assert (gpu["state"], gpu["count"], gpu["gpus"], gpu["driver_version"]) == (state, 0, [], None)
    assert facts(played["not_loaded"])["message"].startswith("NVIDIA-SMI has failed because it couldn't communicate")
    assert facts(played["no_driver"])["nvidia_smi_path"] is None

    required = played["not_loaded_required"]
    assert required["failed"] is True
    assert required["msg"].startswith("GPU required but state is driver_not_loaded: NVIDIA-SMI has failed")


def script(tmp_path, body):
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def run_main(capsys, **args):
    # Another test importing controller code (a filter plugin) flips ansible's is_controller flag, after
    # which module warnings go to the controller's display instead of the result: run as a module does.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ansible.module_utils._internal.is_controller", False)
        with patch_module_args(args), pytest.raises(SystemExit) as done:
            gpu_facts.main()
    return done.value.code, json.loads(capsys.readouterr().out)


def test_main_malformed_output_fails_with_the_reason(tmp_path, capsys):
    path = script(tmp_path, 'echo "0, GPU-1, Tesla, [N/A], 9.0, 00000000:00:06.0, Disabled, 580.159.04"')
    code, result = run_main(capsys, nvidia_smi_path=path)
    assert code == 1 and "memory.total '[N/A]'" in result["msg"]


def test_main_unknown_failure_fails(tmp_path, capsys):
    path = script(tmp_path, 'echo "Unable to determine the device handle for GPU0000:18:00.0: GPU is lost."; exit 15')
    code, result = run_main(capsys, nvidia_smi_path=path)
    assert code == 1 and "rc=15" in result["msg"] and "GPU is lost" in result["msg"]


def test_main_hung_nvidia_smi_times_out(tmp_path, capsys):
    code, result = run_main(capsys, nvidia_smi_path=script(tmp_path, "sleep 10"), timeout=1)
    assert code == 1 and "did not answer within 1 seconds" in result["msg"]


def test_main_topo_failure_is_a_warning(tmp_path, capsys):
    lines = "\\n".join("%d, GPU-%d, NVIDIA L40S, 46068, 8.9, 00000000:0%d:00.0, [N/A], 580.95.05" % (i, i, i)
                       for i in (1, 2))
    path = script(tmp_path, 'case "$1" in --query-gpu=*) printf "%s\\n";; --version) '
                            'printf "DRIVER version : 580.95.05\\nCUDA Version : 13.0\\n";; *) exit 3;; esac' % lines)
    code, result = run_main(capsys, nvidia_smi_path=path)
    assert code == 0 and facts(result)["count"] == 2 and facts(result)["nvlink"] is False
    assert "topo -m failed (rc=3)" in json.dumps(result["warnings"])


def _plan_on_host():
    tools = os.path.join(os.path.dirname(__file__), "..", "fixtures", "real_h100")
    sys.path.insert(0, tools)
    try:
        import plan_on_host
    finally:
        sys.path.remove(tools)
    return plan_on_host


def _recorded(card):
    with open(os.path.join(os.path.dirname(__file__), "..", "fixtures", card, "plans.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("card", ["real_h100", "real_h200"])
def test_planner_on_real_gpus_matches_what_it_printed_there(card):
    """tests/fixtures/real_h200/plans.json came from plan_on_host.py on a real H200 (2026-12-03, with the
    planner of issue 13); real_h100's facts from a real H100, its plans re-derived from those facts by the same
    script after the SGLang memory-fraction fix (0.835 -> 0.83, SGLang's own default). The planner, fed those
    real facts here, must make the same plans and refusals for every supported model fixture."""
    recorded = _recorded(card)
    facts = recorded["gpufleet_gpu"]
    assert (facts["driver_version"], facts["compute_capability"], facts["kernel_module"]) == ("580.159.04", "9.0", "open")
    sglang = recorded["plans"]["sglang/Qwen3-14B"]["argv"]
    assert sglang[sglang.index("--attention-backend") + 1] == "fa3"
    assert sglang[sglang.index("--kv-cache-dtype") + 1] == "fp8_e4m3"
    plan_on_host = _plan_on_host()
    assert sorted(recorded["plans"]) == sorted("%s/%s" % (e, m) for m in plan_on_host.MODELS for e in ("sglang", "vllm"))
    for key, want in recorded["plans"].items():
        engine, name = key.split("/")
        got = plan_on_host.plan_or_refusal(facts, engine, name, recorded.get("host", "vm"))
        assert got.get("argv") == want.get("argv") and got.get("refused") == want.get("refused"), key


def test_real_h200_reads_its_mig_state_and_plans_moe_mla_vl():
    """The H200 run: MIG state read (disabled now and after a reset, no MIG devices) with the one extra query
    a MIG-capable GPU costs; a 671B MoE/MLA model refused on one GPU, the others planned with their own options."""
    recorded = _recorded("real_h200")
    facts = recorded["gpufleet_gpu"]
    assert facts["gpus"][0]["name"] == "NVIDIA H200" and facts["memory_min_mib"] == 143771
    assert (facts["gpus"][0]["mig_mode"], facts["gpus"][0]["mig_mode_pending"]) == ("Disabled", "Disabled")
    assert facts["mig_devices"] == [] and facts["mig_pending"] == []
    with open(os.path.join(os.path.dirname(__file__), "..", "fixtures", "real_h200", "facts.json")) as f:
        calls = [c["argv"][0] for c in json.load(f)["calls"]]
    assert calls == ["--query-gpu=index,uuid,name,memory.total,compute_cap,pci.bus_id,mig.mode.current,driver_version",
                     "--version", "--query-gpu=index,mig.mode.current,mig.mode.pending"]
    plans = recorded["plans"]
    assert "at least" in plans["vllm/DeepSeek-V3"]["refused"] and "at least" in plans["sglang/DeepSeek-V3"]["refused"]
    vllm_mla = plans["vllm/DeepSeek-V2-Lite-Chat"]["argv"]
    assert vllm_mla[vllm_mla.index("--attention-backend") + 1] != "FLASH_ATTN"  # vLLM refuses it for MLA
