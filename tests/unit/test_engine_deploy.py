"""The engine role's data model: engine_instances (several engines per host, one per GPU set) and
the rollout record the report reads (plugin_utils/engine_deploy, filters engine_instances and
engine_rollout_record)."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.filter.fleet import FilterModule
from ansible_collections.gpufleet.serving.plugins.plugin_utils import engine_deploy
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError, build_plan
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims
from gpu_fixtures import gpu_facts, model

FILTERS = FilterModule().filters()


def tiny():
    m = model("Qwen2.5-0.5B-Instruct", path="/models/model", host_path="/srv/models/qwen")
    m["weights_bytes"] = estimate_weights(model_dims(m["config"]))
    return m


def deploy(facts, instances=None, **kw):
    kw.setdefault("engine", "sglang")
    return engine_deploy.deployments(facts, instances, model=tiny(), model_sha="a" * 40, secrets_dir="/etc/gf",
                                     host="node-1", **kw)


def option(args, flag):
    return args[args.index(flag) + 1]


def test_no_instances_is_the_single_engine_of_before():
    """Default: one container named engine_container_name, the plan engine_plan makes, on every GPU."""
    facts = gpu_facts("h100", 2)
    [only] = deploy(facts, name="gpufleet-engine", overrides={"--max-running-requests": 64})
    plan = build_plan(facts, "sglang", tiny(), host="node-1", overrides={"--max-running-requests": 64})
    assert only["name"] == "gpufleet-engine" and only["gpus"] is None
    assert only["plan"] == plan
    assert only["port"] == 30000 and only["container"]["ports"] == ["30000:30000"]
    assert only["container"]["device_requests"] == plan["container"]["device_requests"]
    assert only["container"]["labels"]["gpufleet.plan_hash"] == plan["plan_hash"]
    assert only["container"]["labels"]["gpufleet.model_sha"] == "a" * 40
    assert only["probe"] == {"name": "gpufleet-engine", "port": 30000, "engine": "sglang", "vision": False,
                             "http": plan["http"]}


def test_two_instances_each_get_their_gpus_port_and_overrides():
    facts = gpu_facts("l40s", 4)
    result = deploy(facts, [
        {"name": "eng-a", "gpus": [0, 1], "port": 30001, "overrides": {"--max-running-requests": 32}},
        {"name": "eng-b", "gpus": [2, 3], "port": 30002},
    ], overrides={"--max-running-requests": 8})
    a, b = result
    assert option(a["plan"]["args"], "--port") == "30001" and a["container"]["ports"] == ["30001:30001"]
    assert option(b["plan"]["args"], "--port") == "30002"
    assert option(a["plan"]["args"], "--max-running-requests") == "32"   # the instance's override wins
    assert option(b["plan"]["args"], "--max-running-requests") == "8"
    assert option(a["plan"]["args"], "--tp-size") == "2"
    # Exactly its own GPUs, never "all" (which is what the planner asks for on a full subset).
    assert a["container"]["device_requests"] == [{"driver": "nvidia", "capabilities": [["gpu"]], "device_ids": ["0", "1"]}]
    assert b["container"]["device_requests"][0]["device_ids"] == ["2", "3"]
    assert b["plan"]["container"]["gpus"] == [2, 3]
    assert a["plan"]["plan_hash"] != b["plan"]["plan_hash"]
    assert a["gpu_label"] == "2x NVIDIA L40S"


def test_pinned_devices_change_the_plan_hash():
    facts = gpu_facts("l40s", 2)
    [whole] = deploy(facts)
    [pinned] = deploy(facts, [{"name": "gpufleet-engine", "gpus": [0, 1]}])
    assert pinned["plan"]["plan_hash"] == engine_deploy.plan_hash(pinned["plan"])
    assert pinned["plan"]["plan_hash"] != whole["plan"]["plan_hash"]


def test_gpu_subset_recomputes_what_the_planner_reads():
    facts = gpu_facts("h100", 2)
    facts["gpus"].append({"index": 2, "name": "NVIDIA L40S", "memory_mib": 46068, "compute_capability": "8.9"})
    sub = engine_deploy.gpu_subset(facts, [1, 2])
    assert [g["index"] for g in sub["gpus"]] == [1, 2]
    assert sub["count"] == 2 and sub["memory_min_mib"] == 46068 and sub["memory_total_mib"] == 81559 + 46068
    assert sub["compute_capability"] == "8.9" and sub["homogeneous"] is False
    assert len(facts["gpus"]) == 3  # the host's facts are left alone


def test_api_key_file_is_mounted_read_only_and_ulimits_are_docker_strings():
    [only] = deploy(gpu_facts("h100"), api_key=True, ulimits=[{"name": "memlock", "soft": -1, "hard": -1}])
    assert only["container"]["volumes"] == ["/srv/models/qwen:/models/model:ro",
                                            "/etc/gf/sglang-secrets.yaml:/run/gpufleet/sglang-secrets.yaml:ro"]
    assert only["container"]["ulimits"] == ["memlock:-1:-1"]
    [no_gpu] = deploy(gpu_facts("h100"), gpu_requests=False)
    assert no_gpu["container"]["device_requests"] is None


@pytest.mark.parametrize("instances, message", [
    ([{"gpus": [0]}], "engine_instances[0] needs a name"),
    ([{"name": "a b"}], "'a b' is not a usable container name"),
    ([{"name": "eng-previous"}], "not ending in -previous"),
    ([{"name": "a", "gpus": [0]}, {"name": "a", "gpus": [1]}], "name 'a' is used twice"),
    ([{"name": "a", "gpus": [0], "port": 1}, {"name": "b"}], "engine_instances[1] (b): give its GPU indices"),
    ([{"name": "a", "gpus": [7]}], "GPU indices [7] do not exist; the host has GPUs 0, 1"),
    ([{"name": "a", "gpus": [0, 1]}, {"name": "b", "gpus": [1]}], "GPU 1 is already given to instance a"),
    ([{"name": "a", "gpus": [0]}, {"name": "b", "gpus": [1]}], "instances a and b both listen on port 30000"),
])
def test_bad_instances_name_what_to_fix(instances, message):
    with pytest.raises(PlanError) as err:
        deploy(gpu_facts("h100", 2), instances)
    assert message in str(err.value)
    assert str(err.value).startswith("node-1")


def test_filter_wraps_planner_errors_naming_the_instance():
    with pytest.raises(AnsibleFilterError) as err:
        FILTERS["engine_instances"](gpu_facts("h100", 2), [{"name": "a", "gpus": [0], "overrides": {"--nope": 1}}],
                                    engine="sglang", model=tiny(), host="node-1")
    assert "--nope" in str(err.value) and "(instance a)" in str(err.value)


def listed(name, image, state="running", engine="sglang", sha="b" * 40, cid="c" * 64):
    """A container as docker_host_info (verbose) lists it."""
    return {"Id": cid, "Names": ["/" + name], "Image": image, "State": state, "Labels": {
        "gpufleet.engine": engine, "gpufleet.engine_version": "0.5.23", "gpufleet.model_sha": sha, "other": "x"}}


def inspected(name, image, cid="d" * 64):
    """A container as docker inspect / docker_container return it."""
    return {"Id": cid, "Name": "/" + name, "State": {"Running": True}, "Config": {"Image": image, "Labels": {
        "gpufleet.engine": "sglang", "gpufleet.engine_version": "0.5.24", "gpufleet.model_sha": "b" * 40}}}


def test_rollback_plan_keeps_running_replaced_and_retired_containers():
    host = [listed("eng-a", "img:1"), listed("eng-b", "img:1"), listed("eng-c", "img:1", state="exited"),
            listed("old", "img:0"), listed("gone", "img:0", state="exited"),
            listed("eng-d", "img:1"), listed("eng-d-previous", "img:0", state="exited")]
    plan = FILTERS["engine_rollback_plan"](host, ["eng-a", "eng-b", "eng-c", "eng-d"], ["eng-a", "eng-c", "eng-d"])
    # eng-b unchanged; eng-c not running (nothing good to keep); eng-d keeps the earlier run's -previous.
    assert plan == {"keep": ["eng-a", "old"], "retired": ["old", "gone"]}
    assert engine_deploy.rollback_plan([], ["eng-a"], ["eng-a"]) == {"keep": [], "retired": []}


def test_rollout_record_success_and_rollback():
    before = [listed("eng", "img:1"), listed("old", "img:0")]
    done = FILTERS["engine_rollout_record"](before, [inspected("eng", "img:2"), None], ["eng", "old"], ["eng", "old"])
    assert done["rolled_back"] is False and done["cause"] is None
    assert done["instances"][0] == {
        "name": "eng", "replaced": True,
        "before": {"id": "c" * 12, "image": "img:1", "labels": {
            "gpufleet.engine": "sglang", "gpufleet.engine_version": "0.5.23", "gpufleet.model_sha": "b" * 40}},
        "after": {"id": "d" * 12, "image": "img:2", "labels": {
            "gpufleet.engine": "sglang", "gpufleet.engine_version": "0.5.24", "gpufleet.model_sha": "b" * 40}}}
    assert done["instances"][1]["after"] is None  # the retired one is gone

    back = FILTERS["engine_rollout_record"](before, [listed("eng", "img:1")], ["eng"], ["eng"], restored=["eng"],
                                            failure="health: container exited (exit code 1). ", healthy=True)
    assert back["rolled_back"] is True
    assert back["cause"] == ("health: container exited (exit code 1); rolled back to the previous container "
                             "(eng: img:1), now healthy")


def test_rollout_record_failures_without_a_rollback():
    first = engine_deploy.rollout_record([], [], ["eng"], ["eng"], failure="boom", healthy=None)
    assert first["cause"] == "boom; no previous container to go back to; the new one was removed, now health unknown"
    assert first["instances"][0]["before"] is None and first["rolled_back"] is False
    untouched = engine_deploy.rollout_record([listed("eng", "img:1")], [listed("eng", "img:1")], ["eng"], [],
                                             failure="image missing", healthy=False)
    assert untouched["cause"] == "image missing; no container was changed, now NOT healthy"


def test_docker_config_restored_rewrites_the_cause_and_the_health():
    back = engine_deploy.rollout_record([listed("eng", "img:1")], [listed("eng", "img:1")], ["eng"], ["eng"],
                                        restored=["eng"], failure="health: timed out", healthy=False)
    restored = FILTERS["engine_docker_config_restored"](back, True)
    assert restored["cause"] == ("health: timed out; rolled back to the previous container (eng: img:1); Docker's "
                                 "previous configuration (daemon.json) put back and Docker restarted, now healthy")
    assert restored["docker_config_restored"] is True and restored["instances"] == back["instances"]
    assert back["cause"].endswith(", now NOT healthy")  # the input record is left as it was
    # Docker refused the new daemon.json: the deployment never started, the rescue recorded a bare failure.
    refused = engine_deploy.rollout_record([], [], [], [], failure="Restart Docker: Unable to restart service docker")
    failed = engine_deploy.docker_config_restored(refused, False, failure="Unable to restart service docker. ")
    assert failed["cause"] == ("Restart Docker: Unable to restart service docker; no container was changed; putting "
                               "Docker's previous configuration (daemon.json) back failed: Unable to restart service "
                               "docker, now NOT healthy")
    assert failed["docker_config_restored"] is False
    assert engine_deploy.docker_config_restored(None, True)["cause"].startswith("the rollout of this host failed; Docker's")


# --- MIG (docs/planning.md "MIG"): one engine per MIG device ---------------------------------------------------
import copy  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from ansible_collections.gpufleet.serving.plugins.module_utils import nvidia_smi  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mig_host():
    """gpufleet_gpu of the lab's MIG profile (1x H100, 3g.40gb + 2g.20gb + 2x 1g.10gb), read through the fake."""
    env = dict(os.environ, GPUFLEET_FAKE_GPU_DIR=os.path.join(REPO, "lab", "gpus"), GPUFLEET_FAKE_GPU_PROFILE="h100-mig",
               GPUFLEET_FAKE_STATE_DIR="/nonexistent")

    def run(argv):
        done = subprocess.run([sys.executable] + argv, capture_output=True, text=True, env=env, check=False)
        return done.returncode, done.stdout, done.stderr

    facts, _unused = nvidia_smi.collect(os.path.join(REPO, "lab", "fake-nvidia-smi", "nvidia-smi"), run,
                                        lambda path: "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04\n")
    assert len(facts["mig_devices"]) == 4
    return facts


def one_per_device(facts, **extra):
    return [dict({"name": "eng-mig%d" % d["index"], "mig": d["index"], "port": 30000 + d["index"]}, **extra)
            for d in facts["mig_devices"]]


def test_each_mig_device_is_one_engine_on_its_memory_with_its_uuid(mig_host):
    result = deploy(mig_host, one_per_device(mig_host))
    full = build_plan(gpu_facts("h100"), "sglang", tiny(), host="node-1")
    for entry, device in zip(result, mig_host["mig_devices"]):
        plan = entry["plan"]
        alone = build_plan(engine_deploy.mig_view(mig_host, device), "sglang", tiny(), host="node-1",
                           overrides={"--port": entry["port"]})
        assert option(plan["args"], "--tp-size") == "1"
        # Planned on the instance's memory: SGLang's fraction and the fit follow the MIG device, not the GPU.
        assert plan["fit"] == alone["fit"] != full["fit"]
        assert option(plan["args"], "--mem-fraction-static") == option(alone["args"], "--mem-fraction-static")
        # The container gets exactly the MIG device (docker --gpus device=MIG-...), never the whole GPU.
        assert plan["container"]["gpus"] == [device["uuid"]] and entry["mig"] == device["uuid"]
        assert entry["container"]["device_requests"] == [
            {"driver": "nvidia", "capabilities": [["gpu"]], "device_ids": [device["uuid"]]}]
        assert "CUDA_VISIBLE_DEVICES" not in plan["env"]
        mig = plan["decisions"]["mig"]
        assert (mig["uuid"], mig["profile"], mig["memory_mib"], mig["sm_count"]) == (
            device["uuid"], device["profile"], device["memory_mib"], device["sm_count"])
        assert any("%d SMs" % device["sm_count"] in w for w in plan["warnings"])
        assert entry["gpu_label"] == "1x NVIDIA H100 80GB HBM3 MIG %s" % device["profile"]
    assert len({e["plan"]["plan_hash"] for e in result}) == 4


def test_mig_device_by_uuid_and_a_single_device_host_needs_no_instances(mig_host):
    device = mig_host["mig_devices"][1]
    [by_uuid] = deploy(mig_host, [{"name": "eng", "mig": device["uuid"]}])
    assert by_uuid["plan"]["container"]["gpus"] == [device["uuid"]]
    single = dict(mig_host, mig_devices=[mig_host["mig_devices"][0]])
    [only] = deploy(single, name="gpufleet-engine")
    assert only["name"] == "gpufleet-engine" and only["plan"]["container"]["gpus"] == [single["mig_devices"][0]["uuid"]]


def test_a_plan_for_the_whole_mig_gpu_is_refused(mig_host):
    with pytest.raises(PlanError, match=r"node-1: GPU 0 is in MIG mode, so a container cannot use the whole GPU: "
                                        r"set engine_instances to one per MIG device"):
        build_plan(mig_host, "sglang", tiny(), host="node-1")
    with pytest.raises(PlanError, match=r"node-1: the host has 4 MIG devices .* set engine_instances to one per MIG "
                                        r"device, e.g. \[\{name: gpufleet-engine-mig0, mig: 0"):
        deploy(mig_host, name="gpufleet-engine")


@pytest.mark.parametrize("engine,key", [("sglang", "--tp-size"), ("sglang", "tp-size"), ("sglang", "--tensor-parallel-size"),
                                        ("vllm", "--tensor-parallel-size"), ("vllm", "-tp")])
def test_tensor_parallel_on_a_mig_device_is_refused(mig_host, engine, key):
    with pytest.raises(PlanError, match=r"node-1 \(instance eng-mig0\): %s 2 on MIG device 0 .* tensor parallel must "
                                        r"be 1: remove %s from engine_overrides or engine_instances\[0\].overrides"
                       % (key if key.startswith("-") else "--" + key, key if key.startswith("-") else "--" + key)):
        deploy(mig_host, [{"name": "eng-mig0", "mig": 0, "overrides": {key: 2}}], engine=engine)


def test_missing_mig_devices_name_the_fix(mig_host):
    with pytest.raises(PlanError, match=r"engine_instances\[1\] \(b\): mig 7 is no MIG device of this host; the host "
                                        r"has MIG devices 0 \(GPU 0 3g.40gb, MIG-"):
        deploy(mig_host, [{"name": "a", "mig": 0}, {"name": "b", "mig": 7}])
    empty = dict(mig_host, mig_devices=[])
    with pytest.raises(PlanError, match=r"node-1: GPU 0 has MIG enabled but no MIG devices: create instances with "
                                        r"nvidia-smi mig -i 0 -cgi <profile>\[,<profile>...\] -C .* or disable MIG"):
        deploy(empty)
    gis = dict(empty, mig_gpu_instances=[{"gpu": 0, "gi": 2, "profile": "3g.40gb", "profile_id": 9, "placement": "4:4"}])
    with pytest.raises(PlanError, match=r"GPU 0 has GPU instances \(GI 2\) without compute instances: create them with "
                                        r"nvidia-smi mig -i 0 -gi 2 -cci"):
        deploy(gis, [{"name": "a", "mig": 0}])


def test_mixed_mig_and_whole_gpus(mig_host):
    mixed = copy.deepcopy(mig_host)
    mixed["gpus"].append(dict(mixed["gpus"][0], index=1, uuid="GPU-whole-1", mig_mode="Disabled",
                              mig_mode_pending="Disabled", pci_bus_id="00000000:00:07.0"))
    mixed.update(count=2, memory_total_mib=2 * mixed["memory_min_mib"])
    with pytest.raises(PlanError, match=r"node-1: GPUs 0 are in MIG mode and GPUs 1 are not, and one engine cannot use "
                                        r"both: set engine_instances"):
        deploy(mixed)
    with pytest.raises(PlanError, match=r"engine_instances\[0\] \(both\): GPU 0 is in MIG mode, so a container cannot "
                                        r"use the whole GPU nor mix it with GPUs outside MIG: .*GPU 0: mig: 0, 1, 2, 3"):
        deploy(mixed, [{"name": "both", "gpus": [0, 1]}])
    slice_, whole = deploy(mixed, [{"name": "slice", "mig": 2, "port": 30001}, {"name": "whole", "gpus": [1], "port": 30002}])
    assert slice_["plan"]["container"]["gpus"] == [mixed["mig_devices"][2]["uuid"]]
    assert whole["plan"]["container"]["gpus"] == [1] and "mig" not in whole["plan"]["decisions"]


@pytest.mark.parametrize("instances,message", [
    ([{"name": "a", "mig": 0, "gpus": [0]}], r"\(a\): give gpus or mig, not both"),
    ([{"name": "a", "mig": 0, "port": 1}, {"name": "b", "mig": "0", "port": 2}],
     r"\(b\): MIG device 0 \(GPU 0 3g.40gb, MIG-.*\) is already given to instance a"),
    ([{"name": "a", "mig": 0, "port": 1}, {"name": "b", "port": 2}], r"\(b\): give its GPU indices \(gpus: \[...\]\) or its "
                                                                     r"MIG device \(mig: <n>\)"),
])
def test_bad_mig_instances(mig_host, instances, message):
    with pytest.raises(PlanError, match=message):
        deploy(mig_host, instances)
