"""The planner: acceptance per GPU, bad inputs, argv checked by the rebuilt engine parsers."""
import copy
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.filter.engine import FilterModule
from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump
from ansible_collections.gpufleet.serving.plugins.module_utils.engine_plan import PlanError, build_plan, plan_hash
from ansible_collections.gpufleet.serving.plugins.module_utils.knowledge import load_knowledge
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims
from gpu_fixtures import gpu_facts, model

KN = load_knowledge()
PARSERS = {e: flag_dump.build_parser(e, KN["default_versions"][e]) for e in KN["engines"]}


def sized(name, **changes):
    """A fixture model with weights_bytes counted from its config (what the download would sum)."""
    m = model(name, **changes)
    m.setdefault("weights_bytes", estimate_weights(model_dims(m["config"])))
    return m


def plan(card="h100", count=1, engine="sglang", name="Qwen3-14B", preset="balanced", facts=None, mdl=None, **kw):
    return build_plan(facts or gpu_facts(card, count), engine, mdl or sized(name), preset, host="node-1", **kw)


def option(p, flag):
    """The value after `flag` in the plan's args (True for a bare switch, None when absent)."""
    args = p["args"]
    if flag not in args:
        return None
    i = args.index(flag)
    return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True


def assert_full_names(p):
    index = flag_dump.index_dump(flag_dump.load_dump(
        "%s/%s" % (KN["flag_dump_dir"], KN["engines"][p["engine"]][p["engine_version"]]["flag_dump"])))
    for token in p["args"]:
        if token.startswith("--"):
            assert token in index, token


# --------------------------------------------------------------------------------------------
# Every plan the matrix can make parses with the rebuilt parser (allow_abbrev=False)
# --------------------------------------------------------------------------------------------
MATRIX = [(card, count, engine, name, preset)
          for card, count in (("h100", 1), ("h100", 2), ("h100", 4), ("h100", 8), ("l40s", 1), ("l40s", 2),
                              ("rtx5090", 1), ("rtx4000", 1))
          for engine in ("sglang", "vllm")
          for name in ("Qwen2.5-0.5B-Instruct", "Qwen3-14B", "Qwen3-32B-AWQ", "Qwen3-VL-8B-Instruct", "tiny-lab")
          for preset in ("balanced", "high_performance", "memory_optimized", "ultra_low_memory")]


def test_every_plannable_combination_yields_a_parsable_full_name_argv():
    planned = 0
    for card, count, engine, name, preset in MATRIX:
        try:
            p = plan(card, count, engine, name, preset)
        except PlanError as exc:
            # The only refusals in this matrix: SGLang on Turing, and models too big for the card.
            assert "sm_75" in str(exc) or "does not fit" in str(exc), (card, engine, name, str(exc))
            continue
        planned += 1
        flag_dump.check_argv(PARSERS[engine], p["args"])
        assert_full_names(p)
        assert p["argv"] == p["entrypoint"] + p["args"]
    assert planned > len(MATRIX) // 2


# --------------------------------------------------------------------------------------------
# Acceptance per GPU
# --------------------------------------------------------------------------------------------
def test_turing_vllm_runs_in_float16_without_fp8():
    for preset in ("balanced", "memory_optimized", "ultra_low_memory"):
        p = plan("rtx4000", 1, "vllm", "Qwen2.5-0.5B-Instruct", preset)
        d = p["decisions"]
        assert d["dtype"] == "float16" and option(p, "--dtype") == "float16"
        assert d["kv_cache_dtype"] == "auto" and d["quantization"] is None
        assert "fp8" not in " ".join(p["args"])
        assert d["attention_backend"] == "TRITON_ATTN"
    assert any("float16" in w for w in p["warnings"])


def test_turing_sglang_is_refused_naming_vllm():
    with pytest.raises(PlanError) as err:
        plan("rtx4000", 1, "sglang", "Qwen2.5-0.5B-Instruct")
    message = str(err.value)
    assert "node-1" in message and "Quadro RTX 4000" in message
    assert "sm_75" in message and "engine=vllm" in message


def test_turing_refuses_bf16_and_fp8_when_asked():
    with pytest.raises(PlanError, match="bfloat16 needs CC >= 8.0"):
        plan("rtx4000", 1, "vllm", "Qwen2.5-0.5B-Instruct", overrides={"--dtype": "bfloat16"})
    with pytest.raises(PlanError, match="preset fp8 needs native FP8"):
        plan("rtx4000", 1, "vllm", "Qwen2.5-0.5B-Instruct", "fp8")
    with pytest.raises(PlanError, match="KV cache dtype 'fp8'"):
        plan("rtx4000", 1, "vllm", "Qwen2.5-0.5B-Instruct", overrides={"--kv-cache-dtype": "fp8"})


def test_l40s_allows_fp8_and_vllm_never_gets_fa3():
    p = plan("l40s", 1, "vllm", "Qwen3-14B", "fp8")
    assert option(p, "--quantization") == "fp8" and option(p, "--kv-cache-dtype") == "fp8"
    assert p["decisions"]["attention_backend"] == "FLASHINFER"      # FA2 has no fp8 KV cache
    assert option(plan("l40s", 1, "vllm", "Qwen3-14B", "high_performance"), "--attention-backend") == "FLASH_ATTN"
    with pytest.raises(PlanError, match="FlashAttention 3 is not available to vLLM on CC 8.9"):
        plan("l40s", 1, "vllm", "Qwen3-14B", overrides={"--attention-config": {"flash_attn_version": 3}})
    with pytest.raises(PlanError, match="attention backend 'fa3' is not available to vLLM"):
        plan("l40s", 1, "vllm", "Qwen3-14B", overrides={"--attention-backend": "fa3"})
    with pytest.raises(PlanError, match="FLASH_ATTN cannot use the fp8 KV cache"):
        plan("l40s", 1, "vllm", "Qwen3-14B", "fp8", overrides={"--attention-backend": "flash_attn"})


def test_l40s_sglang_keeps_flashinfer_but_accepts_fa3():
    assert plan("l40s", 1, "sglang", "Qwen3-14B")["decisions"]["attention_backend"] == "flashinfer"
    p = plan("l40s", 1, "sglang", "Qwen3-14B", overrides={"--attention-backend": "fa3"})
    assert option(p, "--attention-backend") == "fa3"


def test_h100_sglang_uses_fa3():
    p = plan("h100", 1, "sglang", "Qwen3-14B")
    assert option(p, "--attention-backend") == "fa3"
    assert option(p, "--kv-cache-dtype") == "fp8_e4m3"          # fa3 takes e4m3 only
    assert plan("h100", 1, "vllm", "Qwen3-14B")["decisions"]["attention_backend"] == "FLASH_ATTN"


def test_rtx5090_gets_a_cuda_12_8_plus_image_and_open_driver_rules():
    p = plan("rtx5090", 1, "sglang", "Qwen3-32B-AWQ")
    assert tuple(map(int, p["image_cuda"].split("."))) >= (12, 8)
    assert p["decisions"]["architecture"] == "blackwell" and "fa3" not in p["args"]
    assert p["decisions"]["quantization"] == "awq" and option(p, "--quantization") is None
    with pytest.raises(PlanError, match="open NVIDIA kernel modules"):
        plan("rtx5090", 1, "sglang", "Qwen3-32B-AWQ", facts=gpu_facts("rtx5090", kernel_module="proprietary"))
    unknown = plan("rtx5090", 1, "sglang", "Qwen3-32B-AWQ", facts=gpu_facts("rtx5090", kernel_module=None))
    assert any("open modules" in w for w in unknown["warnings"])


def cuda12_table(cuda):
    kn = copy.deepcopy(KN)
    kn["engines"]["vllm"]["0.33.0"]["cuda"] = cuda
    return kn


def test_blackwell_needs_driver_570_and_a_cuda_12_8_image():
    facts = gpu_facts("rtx5090", driver="565.57.01", cuda="12.7")
    with pytest.raises(PlanError, match=r">= 570\.26 \(R570\)"):
        plan(engine="vllm", name="Qwen3-32B-AWQ", facts=facts, knowledge=cuda12_table("12.8"))
    with pytest.raises(PlanError, match=r"needs an image built with CUDA >= 12\.8"):
        plan(engine="vllm", name="Qwen3-32B-AWQ", facts=gpu_facts("rtx5090"), knowledge=cuda12_table("12.6"))
    ok = plan(engine="vllm", name="Qwen3-32B-AWQ", facts=gpu_facts("rtx5090", driver="570.172.08", cuda="12.8"),
              knowledge=cuda12_table("12.8"))
    assert any("end of life" in w for w in ok["warnings"])        # R570 PB ended 2026-02


@pytest.mark.parametrize("count,tp", [(1, 1), (2, 2), (4, 4), (8, 8)])
def test_tensor_parallel_uses_every_gpu_the_heads_allow(count, tp):
    p = plan("h100", count, "vllm", "Qwen3-14B")
    assert p["decisions"]["tp_size"] == tp and option(p, "--tensor-parallel-size") == str(tp)
    assert p["container"]["gpus"] == "all"
    assert p["container"]["device_requests"][0]["count"] == -1


def test_tensor_parallel_stops_at_the_heads_and_names_the_idle_gpus():
    p = plan("h100", 8, "sglang", "Qwen2.5-0.5B-Instruct")      # 14 heads, 2 KV heads
    assert option(p, "--tp-size") == "2"
    assert p["container"]["gpus"] == [0, 1]
    assert p["container"]["device_requests"][0]["device_ids"] == ["0", "1"]
    assert any("6 GPU(s) unused" in w for w in p["warnings"])
    assert plan("l40s", 2, "sglang", "Qwen3-VL-8B-Instruct")["decisions"]["tp_size"] == 2


def test_32b_bf16_on_an_8gb_card_fails_preflight_naming_host_gpu_need_have():
    with pytest.raises(PlanError) as err:
        plan("rtx4000", 1, "vllm", "Qwen3-32B")
    message = str(err.value)
    for part in ("node-1", "Quadro RTX 4000", "Qwen/Qwen3-32B", "does not fit", "needs", "GiB", "has"):
        assert part in message


def test_a_bf16_model_too_big_for_an_fp8_gpu_points_at_online_fp8():
    with pytest.raises(PlanError, match="use preset memory_optimized"):
        plan("l40s", 1, "sglang", "Qwen3-32B")
    assert plan("l40s", 1, "sglang", "Qwen3-32B", "memory_optimized")["decisions"]["quantization"] == "fp8"


def test_float32_checkpoints_are_served_and_counted_in_16_bits():
    gpt2 = model("DialoGPT-medium", weights_bytes=4 * 10 ** 9)
    p = plan("l40s", 1, "vllm", mdl=gpt2, preset="high_performance")
    assert p["decisions"]["dtype"] == "float16" and p["fit"]["weights_bytes"] == 2 * 10 ** 9
    assert p["decisions"]["context_length"] == 1024         # n_positions


# --------------------------------------------------------------------------------------------
# Bad inputs: each message names what to fix
# --------------------------------------------------------------------------------------------
def no_heads():
    m = sized("Qwen3-14B")
    del m["config"]["num_attention_heads"]
    return m


BAD = [
    ("unknown engine", dict(engine="tgi"), ["'tgi'", "sglang, vllm"]),
    ("unknown engine version", dict(engine_version="0.4.8"), ["'0.4.8'", "0.5.23"]),
    ("bad preset", dict(preset="turbo"), ["preset 'turbo'", "balanced"]),
    ("tp not dividing heads", dict(count=4, overrides={"--tp-size": 3}), ["tensor parallel size 3", "40 attention heads", "use one of"]),
    ("tp above gpu count", dict(overrides={"--tp-size": 4}), ["needs 4 GPUs", "has 1"]),
    ("tp not a number", dict(overrides={"--tp-size": "two"}), ["--tp-size", "must be a number"]),
    ("negative memory fraction", dict(overrides={"--mem-fraction-static": -0.1}), ["--mem-fraction-static", "(0, 1]"]),
    ("memory fraction above 1", dict(engine="vllm", overrides={"--gpu-memory-utilization": 1.5}), ["--gpu-memory-utilization", "(0, 1]"]),
    ("flag the engine lacks", dict(overrides={"--foo-bar": 1}), ["--foo-bar", "SGLang 0.5.23 has no flag"]),
    ("typo gets a suggestion", dict(overrides={"--schedule-polcy": "lpm"}), ["did you mean --schedule-policy"]),
    ("prefix of a flag", dict(overrides={"--tp": 2}), ["--tp", "--tp-size"]),
    ("removed torchao flag", dict(overrides={"--torchao-config": "int4wo-64"}), ["--torchao-config", "0.5.18", "AWQ/GPTQ"]),
    ("removed vllm swap space", dict(engine="vllm", overrides={"--swap-space": 4}), ["--swap-space", "0.20.0", "--kv-offloading-size"]),
    ("enforce-eager on sglang", dict(overrides={"--enforce-eager": True}), ["--enforce-eager", "--cuda-graph-backend-decode disabled"]),
    ("vllm flag on sglang", dict(overrides={"--gpu-memory-utilization": 0.8}), ["--gpu-memory-utilization", "--mem-fraction-static"]),
    ("flashinfer switch", dict(overrides={"--enable-flashinfer": True}), ["--enable-flashinfer", "--attention-backend flashinfer"]),
    ("invalid choice", dict(overrides={"--dtype": "fp16"}), ["--dtype", "'fp16'", "float16"]),
    ("switch given a word", dict(overrides={"--enable-torch-compile": "yes"}), ["--enable-torch-compile", "true/false"]),
    ("api key on argv", dict(overrides={"--api-key": "sk-123"}), ["--api-key", "api_key=true"]),
    ("model path override", dict(overrides={"--model-path": "/x"}), ["--model-path", "model.path"]),
    ("port out of range", dict(overrides={"--port": 70000}), ["--port", "65535"]),
    ("overrides not a mapping", dict(overrides=["--port", "1"]), ["overrides must be a mapping"]),
    ("model config missing", dict(mdl={"repo_id": "Qwen/Qwen3-14B", "path": "/m", "config": None}), ["model.config", "config.json"]),
    ("missing num_attention_heads", dict(mdl=no_heads()), ["num_attention_heads", "config.json"]),
    ("model path missing", dict(mdl={"repo_id": "x", "config": {}}), ["model.path"]),
    ("gpu facts not healthy", dict(facts={"state": "no_driver", "message": "nvidia-smi not found"}), ["'no_driver'", "nvidia-smi not found", "driver"]),
    ("gpu facts not a dict", dict(facts="h100"), ["gpufleet_gpu"]),
    ("volta", dict(facts=gpu_facts("h100", compute_capability="7.0")), ["CC 7.0", "not supported", "sm_70"]),
    ("driver too old for the image", dict(facts=gpu_facts("h100", driver="570.172.08", cuda="12.8")), ["570.172.08", "CUDA 13.0", ">= 580.65.06"]),
    ("driver too old, no driver version", dict(facts=gpu_facts("h100", driver=None, cuda="12.8")), ["CUDA 12.8", ">= 580.65.06"]),
    ("blackwell proprietary modules", dict(card="rtx5090", facts=gpu_facts("rtx5090", kernel_module="proprietary")), ["blackwell", "open"]),
    ("context pinned too large", dict(card="rtx5090", name="Qwen3-32B-AWQ", preset="high_performance", overrides={"--context-length": 40960}), ["pinned context length 40960", "lower the context length"]),
    ("context above model maximum", dict(overrides={"--context-length": "64k"}), ["64000", "max_position_embeddings 40960"]),
    ("fa3 on blackwell", dict(card="rtx5090", name="Qwen3-32B-AWQ", overrides={"--attention-backend": "fa3"}), ["'fa3'", "CC 12.0"]),
    ("awq checkpoint with fp8 preset", dict(name="Qwen3-32B-AWQ", preset="fp8"), ["preset fp8", "awq", "balanced"]),
    ("quantization not for this gpu", dict(engine="vllm", overrides={"--quantization": "mxfp4"}, card="rtx4000", name="Qwen2.5-0.5B-Instruct"), ["'mxfp4'", "CC 7.5"]),
    ("unknown draft algorithm", dict(mdl=sized("Qwen3-14B", draft_path="/d", draft_algorithm="medusa")), ["draft_algorithm", "'MEDUSA'"]),
]


@pytest.mark.parametrize("case,kwargs,parts", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_thing_to_fix(case, kwargs, parts):
    with pytest.raises(PlanError) as err:
        plan(**kwargs)
    for part in parts:
        assert part in str(err.value), (case, str(err.value))


# --------------------------------------------------------------------------------------------
# Shape of the plan
# --------------------------------------------------------------------------------------------
def test_plan_keys_and_serving_basics():
    p = plan()
    assert set(p) == {"engine", "engine_version", "knowledge_table_version", "image", "image_cuda", "entrypoint",
                      "args", "argv", "env", "secrets", "port", "container", "decisions", "fit", "warnings",
                      "plan_hash"}
    assert p["image"] == "lmsysorg/sglang:v0.5.23" and p["port"] == 30000
    assert p["entrypoint"] == ["python3", "-m", "sglang.launch_server"]
    assert option(p, "--host") == "0.0.0.0" and option(p, "--port") == "30000"
    assert option(p, "--model-path") == "/models/Qwen3-14B" and option(p, "--served-model-name") == "qwen3-14b"
    assert option(p, "--enable-metrics") is True
    assert p["env"]["HF_HUB_OFFLINE"] == "1"
    assert p["fit"]["context_length"] == int(option(p, "--context-length"))
    assert float(option(p, "--mem-fraction-static")) == p["decisions"]["memory_fraction"]


def test_vllm_plan_uses_the_positional_model_and_keeps_metrics_on():
    p = plan(engine="vllm")
    assert p["entrypoint"] == ["vllm", "serve"] and p["args"][0] == "/models/Qwen3-14B"
    assert p["image"] == "vllm/vllm-openai:v0.33.0" and p["port"] == 8000
    assert "--disable-log-stats" not in p["args"] and "--model" not in p["args"]


def test_container_options():
    c = plan(engine="vllm")["container"]
    assert c["ipc_mode"] == "host" and c["shm_size"]
    assert {"name": "memlock", "soft": -1, "hard": -1} in c["ulimits"]
    assert {"name": "stack", "soft": 67108864, "hard": 67108864} in c["ulimits"]


def test_api_key_never_reaches_argv():
    v = plan(engine="vllm", api_key=True)
    assert v["secrets"] == {"api_key": {"file": "/run/gpufleet/vllm-secrets.yaml", "key": "api-key"}}
    assert "--api-key" not in v["args"] and v["args"][-2:] == ["--config", "/run/gpufleet/vllm-secrets.yaml"]
    s = plan(api_key=True)
    assert "--api-key" not in s["args"]
    assert option(s, "--config") == s["secrets"]["api_key"]["file"]
    assert s["secrets"]["api_key"]["key"] == "api-key"
    assert plan()["secrets"] == {}


def test_speculative_decoding_per_engine():
    draft = dict(draft_path="/models/draft", draft_weights_bytes=10 ** 9)
    s = plan(mdl=sized("Qwen3-14B", **draft))
    assert option(s, "--speculative-algorithm") == "EAGLE3"
    assert option(s, "--speculative-draft-model-path") == "/models/draft"
    assert option(s, "--speculative-eagle-topk") == "1"
    assert s["fit"]["weights_bytes"] == sized("Qwen3-14B")["weights_bytes"] + 10 ** 9
    v = plan(engine="vllm", mdl=sized("Qwen3-14B", **draft))
    assert json.loads(option(v, "--speculative-config")) == {"method": "eagle3", "model": "/models/draft",
                                                             "num_speculative_tokens": 3}


def test_presets_change_quantization_graphs_and_context():
    low = plan("l40s", 1, "sglang", "Qwen3-14B", "ultra_low_memory")
    assert option(low, "--quantization") == "fp8" and option(low, "--cuda-graph-backend-decode") == "disabled"
    assert low["decisions"]["context_length"] == 8192 and option(low, "--max-running-requests") == "16"
    assert "--enforce-eager" in plan("l40s", 1, "vllm", "Qwen3-14B", "ultra_low_memory")["args"]
    high = plan("l40s", 1, "sglang", "Qwen3-14B", "high_performance")
    assert option(high, "--quantization") is None and option(high, "--kv-cache-dtype") == "auto"
    assert low["fit"]["weights_bytes"] < high["fit"]["weights_bytes"]


def test_sglang_memory_fraction_follows_the_engine_formula():
    small = plan("rtx5090", 1, "sglang", "Qwen3-32B-AWQ")["decisions"]["memory_fraction"]
    big = plan("h100", 1, "sglang", "Qwen3-14B")["decisions"]["memory_fraction"]
    text = plan("l40s", 1, "sglang", "Qwen3-14B")["decisions"]["memory_fraction"]
    vision = plan("l40s", 1, "sglang", "Qwen3-VL-8B-Instruct")["decisions"]["memory_fraction"]
    assert 0.5 < small < text < 0.9 and 0.5 < big < 0.9
    assert vision < text                      # VLMs keep room for the vision tower's activations
    assert plan("h100", 1, "sglang", overrides={"--mem-fraction-static": 0.7})["decisions"]["memory_fraction"] == 0.7


def test_overrides_pass_through_replace_and_remove():
    p = plan(overrides={"--schedule-policy": "lof", "--enable-torch-compile": True, "--attention-backend": None,
                        "tensor-parallel-size": 1})
    assert option(p, "--schedule-policy") == "lof" and option(p, "--enable-torch-compile") is True
    assert "--attention-backend" not in p["args"]
    v = plan(engine="vllm", overrides={"--enable-prefix-caching": False, "--max-num-seqs": 8})
    assert "--disable-prefix-caching" in v["args"] and option(v, "--max-num-seqs") == "8"


def test_semantic_overrides_replace_the_planned_values():
    p = plan(engine="vllm", overrides={"--host": "127.0.0.1", "--served-model-name": "chat", "--dtype": "auto",
                                       "--attention-config": {"flash_attn_version": 3}})
    assert option(p, "--host") == "127.0.0.1" and option(p, "--served-model-name") == "chat"
    assert option(p, "--dtype") == "bfloat16"            # auto is resolved as the engine would
    assert json.loads(option(p, "--attention-config")) == {"flash_attn_version": 3}   # FA3 is fine on Hopper


def test_deprecated_override_is_warned_about():
    p = plan(overrides={"--disable-cuda-graph": True})
    assert "--disable-cuda-graph" in p["args"]
    assert any("deprecated" in w and "--cuda-graph-backend-decode" in w for w in p["warnings"])


def test_plan_hash_is_stable_and_ignores_warnings():
    a, b = plan(), plan()
    assert a["plan_hash"] == b["plan_hash"] and len(a["plan_hash"]) == 64
    a["warnings"].append("something")
    assert plan_hash(a) == b["plan_hash"]
    assert plan(overrides={"--schedule-policy": "lpm"})["plan_hash"] != b["plan_hash"]


def test_unknown_cc_minor_uses_its_family_with_a_warning():
    p = plan(facts=gpu_facts("rtx5090", compute_capability="12.1"), name="Qwen3-32B-AWQ")
    assert any("CC 12.1 is planned with the CC 12.0 entry" in w for w in p["warnings"])


# --------------------------------------------------------------------------------------------
# The Ansible filters
# --------------------------------------------------------------------------------------------
def test_filters_return_plan_argv_and_fit_and_raise_filter_errors():
    filters = FilterModule().filters()
    kwargs = dict(engine="vllm", model=sized("Qwen3-14B"), host="node-1")
    whole = filters["engine_plan"](gpu_facts("h100"), **kwargs)
    assert filters["launch_args"](gpu_facts("h100"), **kwargs) == whole["argv"]
    assert filters["model_fit"](gpu_facts("h100"), **kwargs) == whole["fit"]
    with pytest.raises(AnsibleFilterError, match="--swap-space"):
        filters["engine_plan"](gpu_facts("h100"), overrides={"--swap-space": 4}, **kwargs)
    with pytest.raises(AnsibleFilterError, match="cannot read knowledge table"):
        filters["engine_plan"](gpu_facts("h100"), knowledge_path="/nonexistent.yml", **kwargs)
