"""Engine versions per GPU: which version the planner picks and why, pins, and per-version facts."""
import copy
import json
import os
import re
import shutil

import pytest
import yaml

from ansible_collections.gpufleet.serving.plugins.filter.engine import engine_image_ref
from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import (
    PlanError, build_plan, image_ref, plan_hash)
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import (
    KnowledgeError, choose_version, default_path, engine_version_key, engine_versions, load_knowledge)
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims
from gpu_fixtures import gpu_facts, model

KN = load_knowledge()


def sized(name, **changes):
    m = model(name, **changes)
    m.setdefault("weights_bytes", estimate_weights(model_dims(m["config"])))
    return m


def plan(card, engine, name="Qwen2.5-0.5B-Instruct", facts=None, **kw):
    return build_plan(facts or gpu_facts(card), engine, sized(name), host="node-1", **kw)


def args_of(p):
    return dict(zip(p["args"], p["args"][1:]))


def test_engine_versions_sort_post_releases_like_pypi():
    assert engine_version_key("0.5.1.post2") > engine_version_key("0.5.1")
    assert engine_version_key("0.5.1.post2") < engine_version_key("0.5.2") < engine_version_key("0.5.23")
    assert engine_versions(KN, "sglang") == ["0.5.1.post2", "0.5.23"]
    assert engine_versions(KN, "vllm") == ["0.26.0", "0.33.0"]
    with pytest.raises(ValueError):
        engine_version_key("0.5.1rc1")


def test_turing_sglang_picks_the_turing_version_and_says_why():
    p = plan("rtx4000", "sglang")
    assert p["engine_version"] == "0.5.1.post2" and p["image"] == "lmsysorg/sglang:v0.5.1.post2-cu126"
    reason = p["engine_version_reason"]
    assert reason.startswith("newest sglang in table %s whose kernels run on CC 7.5" % KN["table_version"])
    assert "0.5.23: sglang-kernel 0.4.10 ships no sm_75 code" in reason
    # the command line is one that version's parser takes: its own spellings, no newer-only flags
    flag_dump.check_argv(flag_dump.build_parser("sglang", "0.5.1.post2"), p["args"])
    args = args_of(p)
    assert args["--tensor-parallel-size"] == "1" and args["--dtype"] == "float16"
    assert args["--attention-backend"] == "flashinfer" and "--config" not in args
    # 0.5.1.post2's own default: round((8192 - (2.8 + 1/10) GiB) / 8192, 3) (server_args.py __post_init__)
    assert float(args["--mem-fraction-static"]) == round((8192 - (2.8 + 1 / 10) * 1024) / 8192, 3)
    assert p["decisions"]["prefill_cuda_graph"] is False          # no prefill graphs in that version
    assert p["decisions"]["prefill_tokens"] == 2048


def test_turing_sglang_graphs_off_uses_that_versions_switch():
    p = plan("rtx4000", "sglang", preset="ultra_low_memory")
    assert "--disable-cuda-graph" in p["args"] and "--cuda-graph-backend-decode" not in p["args"]
    flag_dump.check_argv(flag_dump.build_parser("sglang", "0.5.1.post2"), p["args"])
    with pytest.raises(PlanError, match="--cuda-graph-backend-decode"):   # a 0.5.23-only flag
        plan("rtx4000", "sglang", overrides={"--cuda-graph-backend-decode": "disabled"})


def test_hopper_sglang_picks_the_newest():
    p = plan("h100", "sglang")
    assert p["engine_version"] == "0.5.23" and p["image"] == "lmsysorg/sglang:v0.5.23"
    assert "whose kernels run on CC 9.0" in p["engine_version_reason"]
    assert "(not" not in p["engine_version_reason"]        # nothing newer was skipped
    assert not p["warnings"]


def test_an_old_driver_gets_the_version_it_can_run_and_a_warning():
    facts = gpu_facts("h100", driver="570.172.08", cuda="12.8")
    p = plan("h100", "sglang", facts=facts)
    assert p["engine_version"] == "0.5.1.post2"
    assert "0.5.23: its image needs CUDA 13.0 (driver >= 580.65.06); driver 570.172.08" in p["engine_version_reason"]
    assert any("SGLang 0.5.23 runs on this GPU with NVIDIA driver >= 580.65.06 (R580)" in w for w in p["warnings"])


def test_pinned_vllm_0_26_on_hopper_plans_with_its_own_flags():
    pinned = plan("h200", "vllm", engine_version="0.26.0")
    assert pinned["engine_version"] == "0.26.0" and pinned["engine_version_reason"] == "pinned by engine_version"
    assert pinned["image"] == "vllm/vllm-openai:v0.26.0" and pinned["image_cuda"] == "13.0"
    flag_dump.check_argv(flag_dump.build_parser("vllm", "0.26.0"), pinned["args"])
    # --calculate-kv-scales is a flag of 0.26.0 and gone in 0.29.0: the pin decides which dump checks it
    kept = plan("h200", "vllm", engine_version="0.26.0", overrides={"--calculate-kv-scales": True})
    assert "--calculate-kv-scales" in kept["args"]
    with pytest.raises(PlanError, match=r"vLLM 0\.33\.0 has no such flag \(gone since 0\.29\.0\)"):
        plan("h200", "vllm", overrides={"--calculate-kv-scales": True})
    assert plan("h200", "vllm")["engine_version"] == "0.33.0"


def test_vllm_batch_defaults_per_version():
    # get_batch_defaults: 0.33.0 has a 16384 tier from 160 GiB, 0.26.0 stops at 8192
    big = gpu_facts("h200", memory_min_mib=183359, gpus=[dict(gpu_facts("h200")["gpus"][0], memory_mib=183359)])
    new = plan("h200", "vllm", facts=big)
    old = plan("h200", "vllm", facts=big, engine_version="0.26.0")
    assert new["decisions"]["prefill_tokens"] == 16384 and old["decisions"]["prefill_tokens"] == 8192
    # 16384 batched tokens are the default of 0.33.0 but 8192 more than 0.26.0's: more activation reserve
    ovr = {"--max-num-batched-tokens": 16384}
    assert (plan("h200", "vllm", facts=big, engine_version="0.26.0", overrides=ovr)["fit"]["reserve_bytes"]
            > plan("h200", "vllm", facts=big, overrides=ovr)["fit"]["reserve_bytes"])


def test_pinned_sglang_0_5_23_on_turing_fails_naming_the_variable_and_the_alternative():
    with pytest.raises(PlanError) as err:
        plan("rtx4000", "sglang", engine_version="0.5.23")
    message = str(err.value)
    assert message.startswith("node-1 (1 x Quadro RTX 4000): engine_version 0.5.23 pins SGLang 0.5.23")
    assert "sm_75" in message and "set engine_version to 0.5.1.post2" in message
    assert "remove engine_version" in message


def test_the_turing_version_refuses_an_api_key_rather_than_put_it_on_argv():
    with pytest.raises(PlanError) as err:
        plan("rtx4000", "sglang", api_key=True)
    message = str(err.value)
    assert "engine_api_key" in message and "0.5.1.post2" in message and "command line" in message
    assert "--api-key" not in plan("rtx4000", "sglang")["args"]
    assert "--config" in plan("h100", "sglang", api_key=True)["args"]


def test_speculative_flags_come_from_the_versions_table():
    draft = dict(draft_path="/models/draft", draft_weights_bytes=10 ** 8)
    old = build_plan(gpu_facts("rtx4000"), "sglang", sized("Qwen2.5-0.5B-Instruct", **draft), host="n")
    spec = KN["engines"]["sglang"]["0.5.1.post2"]["speculative"]
    assert args_of(old)[spec["flags"]["draft_model"]] == "/models/draft"
    flag_dump.check_argv(flag_dump.build_parser("sglang", "0.5.1.post2"), old["args"])
    # 0.5.1.post2 adds 2 GiB for a draft model (server_args.py)
    assert old["decisions"]["memory_fraction"] == round((8192 - (2.8 + 0.1 + 2) * 1024) / 8192, 3)
    with pytest.raises(PlanError, match="STANDALONE"):       # no STANDALONE in that version
        build_plan(gpu_facts("rtx4000"), "sglang", sized("Qwen2.5-0.5B-Instruct", draft_algorithm="standalone",
                                                         **draft), host="n")
    # vLLM: the JSON keys and the flag are the table's too
    kn = copy.deepcopy(KN)
    kn["engines"]["vllm"]["0.33.0"]["speculative"] = dict(kn["engines"]["vllm"]["0.33.0"]["speculative"],
                                                          values={"num_speculative_tokens": 5})
    v = build_plan(gpu_facts("h100"), "vllm", sized("Qwen3-14B", **draft), host="n", knowledge=kn)
    assert json.loads(args_of(v)["--speculative-config"])["num_speculative_tokens"] == 5


def test_the_plan_carries_its_versions_endpoints():
    assert plan("rtx4000", "sglang")["http"]["version"]["path"] == "/get_server_info"
    assert plan("h100", "sglang")["http"]["version"]["path"] == "/server_info"
    assert plan("h100", "vllm")["http"]["health_503"] == "dead"


def test_the_reason_does_not_change_the_plan_hash():
    p = plan("h100", "sglang")
    assert plan_hash(dict(p, engine_version_reason="other words")) == p["plan_hash"]
    assert plan_hash(dict(p, engine_version="0.5.1.post2")) != p["plan_hash"]


def test_image_ref_picks_what_the_plan_will_pick():
    assert image_ref("sglang", gpu_facts=gpu_facts("rtx4000")) == plan("rtx4000", "sglang")["image"]
    assert engine_image_ref("sglang", gpu_facts=gpu_facts("h100")) == "lmsysorg/sglang:v0.5.23"
    # no usable GPU facts yet (no driver): the table's default_versions entry
    assert image_ref("sglang", gpu_facts={"state": "no_driver"}) == "lmsysorg/sglang:v%s" % KN["default_versions"]["sglang"]
    assert image_ref("sglang", "0.5.1.post2") == "lmsysorg/sglang:v0.5.1.post2-cu126"


def test_choose_version_explains_when_nothing_runs():
    version, reason, skipped = choose_version(KN, "sglang", "7.5", "535.230.02")
    assert version is None and set(skipped) == {"0.5.23", "0.5.1.post2"}
    assert "0.5.1.post2: its image needs CUDA 12.6 (driver >= 560.28.03)" in reason
    # the refusal is about the driver (0.5.1.post2's kernels would run), not about sm_75
    with pytest.raises(PlanError, match=r"needs CUDA 12\.6 but the host driver 535\.230\.02 .*>= 560\.28\.03"):
        plan("rtx4000", "sglang", facts=gpu_facts("rtx4000", driver="535.230.02", cuda="12.2"))


def test_every_version_plans_on_a_gpu_it_runs_on():
    for engine in KN["engines"]:
        for version in engine_versions(KN, engine):
            card = "h100" if 90 in KN["engines"][engine][version]["kernel_cubins"] else "rtx4000"
            p = plan(card, engine, engine_version=version)
            flag_dump.check_argv(flag_dump.build_parser(engine, version), p["args"])


def copy_table(tmp_path):
    """The collection's table and dumps in tmp_path, to break."""
    shutil.copytree(os.path.join(os.path.dirname(default_path()), "engine_flags"), tmp_path / "engine_flags")
    with open(default_path()) as f:
        table = yaml.safe_load(f)
    return table


def test_a_version_without_its_flag_dump_is_refused(tmp_path):
    table = copy_table(tmp_path)
    (tmp_path / "engine_flags" / "vllm-0.26.0.json").unlink()
    (tmp_path / "knowledge.yml").write_text(yaml.safe_dump(table))
    with pytest.raises(KnowledgeError, match=re.escape("engines.vllm.0.26.0: flag_dump vllm-0.26.0.json is missing")):
        load_knowledge(str(tmp_path / "knowledge.yml"))


@pytest.mark.parametrize("mutate,where", [
    (lambda e: e.pop("http"), "http needs health"),
    (lambda e: e["http"].update(health_503="maybe"), "health_503"),
    (lambda e: e["speculative"]["flags"].pop("draft_model"), "speculative.flags"),
    (lambda e: e.pop("cuda_graph_phases"), "cuda_graph_phases"),
    (lambda e: e["memory"].pop("formula"), "memory.formula"),
    (lambda e: e["memory"].pop("reserve_tiers"), "memory.reserve_tiers"),
    (lambda e: e["api_key"].pop("reason"), "api_key.via unsupported needs a reason"),
    (lambda e: e["archs"].update({"7.0": {}}), "archs.7.0"),
    (lambda e: e["archs"]["7.5"].update(attention_backends=["triton"]), "archs.7.5: default_attention"),
])
def test_the_new_version_keys_are_required(tmp_path, mutate, where):
    table = copy_table(tmp_path)
    mutate(table["engines"]["sglang"]["0.5.1.post2"])
    (tmp_path / "knowledge.yml").write_text(yaml.safe_dump(table))
    with pytest.raises(KnowledgeError, match=re.escape(where)):
        load_knowledge(str(tmp_path / "knowledge.yml"))


def test_engine_http_defaults_are_the_newest_versions_endpoints():
    from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http
    for engine in KN["engines"]:
        newest = engine_versions(KN, engine)[-1]
        assert engine_http.DEFAULT_ENDPOINTS[engine] == KN["engines"][engine][newest]["http"], engine


def test_engine_http_reads_the_versions_endpoints(monkeypatch):
    from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http
    asked = []

    def fake_get(base_url, path, api_key=None, timeout=10.0):
        asked.append(path)
        return (200, b'{"version": "0.5.1.post2"}') if path == "/get_server_info" else (404, b"{}")

    monkeypatch.setattr(engine_http, "get", fake_get)
    old = plan("rtx4000", "sglang")["http"]
    assert engine_http.engine_version("http://x", "sglang", endpoints=old) == "0.5.1.post2"
    assert engine_http.engine_version("http://x", "sglang") is None       # 0.5.23's /server_info
    assert asked == ["/get_server_info", "/server_info"]
    monkeypatch.setattr(engine_http, "get", lambda *a, **k: (503, b""))
    assert engine_http.probe_health("http://x", "sglang", endpoints=old)[0] == "waiting"
    assert engine_http.probe_health("http://x", "vllm", endpoints=KN["engines"]["vllm"]["0.26.0"]["http"])[0] == "dead"


def test_a_version_without_the_image_budget_flags_refuses_a_vlm():
    with pytest.raises(PlanError, match=r"SGLang 0\.5\.1\.post2 has no --limit-mm-data-per-request.*engine=vllm"):
        plan("h100", "sglang", name="Qwen3-VL-8B-Instruct", engine_version="0.5.1.post2")
    assert "vision" in plan("h100", "sglang", name="Qwen3-VL-8B-Instruct")["decisions"]
