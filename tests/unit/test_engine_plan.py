"""The planner: acceptance per GPU, bad inputs, argv checked by the rebuilt engine parsers."""
import copy
import itertools
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.filter.engine import FilterModule
from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError, build_plan, plan_hash
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import load_knowledge
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims
from gpu_fixtures import gpu_facts, model

KN = load_knowledge()
_PARSERS = {}


def parser_of(p):
    """The rebuilt parser of the engine version the plan picked (versions differ per GPU)."""
    key = (p["engine"], p["engine_version"])
    if key not in _PARSERS:
        _PARSERS[key] = flag_dump.build_parser(*key)
    return _PARSERS[key]


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
            # The only refusals in this matrix: models too big for the card.
            assert "does not fit" in str(exc), (card, engine, name, str(exc))
            continue
        planned += 1
        flag_dump.check_argv(parser_of(p), p["args"])
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


def test_turing_sglang_without_a_turing_version_is_refused_naming_vllm():
    kn = copy.deepcopy(KN)
    del kn["engines"]["sglang"]["0.5.1.post2"]      # a table whose every SGLang lacks sm_75 code
    with pytest.raises(PlanError) as err:
        plan("rtx4000", 1, "sglang", "Qwen2.5-0.5B-Instruct", knowledge=kn)
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
        plan(engine="vllm", name="Qwen3-32B-AWQ", facts=gpu_facts("rtx5090"), knowledge=cuda12_table("12.6"),
             engine_version="0.33.0")
    # unpinned, the planner skips the CUDA 12.6 build for the newest one with CUDA >= 12.8
    assert plan(engine="vllm", name="Qwen3-32B-AWQ", facts=gpu_facts("rtx5090"),
                knowledge=cuda12_table("12.6"))["engine_version"] == "0.26.0"
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
    # no SGLang of the table runs below driver 560 (CUDA 12.6)
    ("driver too old for the image", dict(facts=gpu_facts("h100", driver="550.54.15", cuda="12.4")), ["550.54.15", "CUDA 13.0", ">= 580.65.06"]),
    ("driver too old, no driver version", dict(facts=gpu_facts("h100", driver=None, cuda="12.4")), ["CUDA 12.4", ">= 580.65.06"]),
    ("pinned version, driver too old", dict(engine_version="0.5.23", facts=gpu_facts("h100", driver="570.172.08", cuda="12.8")),
     ["570.172.08", "CUDA 13.0", ">= 580.65.06", "engine_version=0.5.1.post2"]),
    ("blackwell proprietary modules", dict(card="rtx5090", facts=gpu_facts("rtx5090", kernel_module="proprietary")), ["blackwell", "open"]),
    ("context pinned too large", dict(card="rtx5090", name="Qwen3-32B-AWQ", preset="high_performance", overrides={"--context-length": 40960}),
     ["pinned context length 40960", "lower the context length"]),
    ("context above model maximum", dict(overrides={"--context-length": "64k"}), ["64000", "max_position_embeddings 40960"]),
    ("fa3 on blackwell", dict(card="rtx5090", name="Qwen3-32B-AWQ", overrides={"--attention-backend": "fa3"}), ["'fa3'", "CC 12.0"]),
    ("awq checkpoint with fp8 preset", dict(name="Qwen3-32B-AWQ", preset="fp8"), ["preset fp8", "awq", "balanced"]),
    ("quantization not for this gpu", dict(engine="vllm", overrides={"--quantization": "mxfp4"}, card="rtx4000", name="Qwen2.5-0.5B-Instruct"),
     ["'mxfp4'", "CC 7.5"]),
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
    assert set(p) == {"engine", "engine_version", "engine_version_reason", "knowledge_table_version", "image",
                      "image_cuda", "entrypoint", "args", "argv", "env", "secrets", "port", "http", "container",
                      "decisions", "fit", "warnings", "plan_hash"}
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


# --------------------------------------------------------------------------------------------
# MoE, MLA and quantized checkpoints (docs/planning.md "MoE, MLA and quantized checkpoints")
# --------------------------------------------------------------------------------------------
REPOS = {"DeepSeek-V3": "deepseek-ai/DeepSeek-V3", "DeepSeek-V2-Lite-Chat": "deepseek-ai/DeepSeek-V2-Lite-Chat",
         "Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B", "Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-Instruct-v0.1",
         "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
         "Meta-Llama-3.1-8B-Instruct-FP8": "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8",
         "Qwen2.5-7B-Instruct-GPTQ-Int4": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"}


def real(name, **changes):
    """A new fixture under its real repo id, weights counted from config.json unless given."""
    return sized(name, repo_id=REPOS[name], **changes)


def cc_facts(cc, count=1):
    """H100-shaped facts re-labelled with another CC (SM100 has no card in gpu_fixtures)."""
    facts = gpu_facts("h100", count, compute_capability=cc)
    for gpu in facts["gpus"]:
        gpu["compute_capability"] = cc
    return facts


def mla_table(engine, cc):
    return KN["archs"][cc][engine]["mla"]


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
@pytest.mark.parametrize("card", ["h100", "h200", "l40s", "rtx5090"])
def test_mla_models_get_an_mla_backend_of_the_engine(engine, card):
    cc = gpu_facts(card)["compute_capability"]
    for preset in ("high_performance", "balanced"):
        p = plan(card, 2 if card == "rtx5090" else 1, engine, mdl=real("DeepSeek-V2-Lite-Chat"), preset=preset)
        backend = p["decisions"]["attention_backend"]
        assert backend in mla_table(engine, cc)["attention_backends"], (card, preset)
        assert p["decisions"]["kv_layout"] == "mla" and option(p, "--attention-backend") == backend
        # vLLM refuses its MHA backends for MLA (validate_configuration); SGLang's fa3 is no MLA kernel below 9.0.
        assert backend not in ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "trtllm_mha")
        assert not (backend == "fa3" and cc != "9.0")
        if p["decisions"]["kv_cache_dtype"] != "auto":
            assert backend in mla_table(engine, cc)["fp8_kv_backends"]


def test_mla_backends_on_hopper_follow_the_engines_priorities():
    assert plan("h100", 1, "vllm", mdl=real("DeepSeek-V2-Lite-Chat"),
                preset="high_performance")["decisions"]["attention_backend"] == "FLASH_ATTN_MLA"
    # FLASH_ATTN_MLA has no fp8 KV cache: FLASHMLA is next in vLLM's priority list.
    assert plan("h100", 1, "vllm", mdl=real("DeepSeek-V2-Lite-Chat"))["decisions"]["attention_backend"] == "FLASHMLA"
    assert plan("h100", 1, "sglang", mdl=real("DeepSeek-V2-Lite-Chat"))["decisions"]["attention_backend"] == "fa3"
    assert plan("l40s", 1, "sglang", mdl=real("DeepSeek-V2-Lite-Chat"))["decisions"]["attention_backend"] == "triton"


def test_sm100_deepseek_v3_gets_trtllm_mla_in_sglang_and_v2_flashinfer():
    v3 = plan(facts=cc_facts("10.0", 8), engine="sglang", mdl=real("DeepSeek-V3", weights_bytes=400 * 2 ** 30),
              preset="high_performance")
    assert v3["decisions"]["attention_backend"] == "trtllm_mla"
    v2 = plan(facts=cc_facts("10.0"), engine="sglang", mdl=real("DeepSeek-V2-Lite-Chat"), preset="high_performance")
    assert v2["decisions"]["attention_backend"] == "flashinfer"
    assert plan(facts=cc_facts("10.0"), engine="vllm", mdl=real("DeepSeek-V2-Lite-Chat"),
                preset="high_performance")["decisions"]["attention_backend"] == "FLASHINFER_MLA"


@pytest.mark.parametrize("engine,card,backend", [("vllm", "h100", "FLASH_ATTN"), ("vllm", "h100", "flashinfer"),
                                                 ("sglang", "l40s", "fa3"), ("sglang", "h100", "trtllm_mha"),
                                                 ("vllm", "rtx5090", "FLASHMLA")])
def test_a_pinned_backend_the_engine_refuses_for_mla_is_a_plan_error(engine, card, backend):
    with pytest.raises(PlanError) as err:
        plan(card, 1, engine, mdl=real("DeepSeek-V2-Lite-Chat"), overrides={"--attention-backend": backend})
    message = str(err.value)
    assert "node-1" in message and repr(backend) in message and "MLA" in message and "choose one of" in message


def test_mla_kv_cache_in_the_fit_is_the_latent_on_every_gpu():
    one = plan("h200", 8, "vllm", mdl=real("DeepSeek-V3"))
    d = model_dims(real("DeepSeek-V3")["config"])
    assert one["fit"]["kv_bytes_per_token"] == 61 * (d["mla"]["kv_lora_rank"] + d["mla"]["qk_rope_head_dim"]) * 1
    small = plan("h100", 1, "vllm", mdl=real("DeepSeek-V2-Lite-Chat"))
    assert small["fit"]["kv_bytes_per_token"] == 27 * 576 * 1


def test_deepseek_v3_plans_on_8_h200_with_expert_parallelism_and_is_refused_on_2_h100():
    for engine, flag in (("sglang", "--ep-size"), ("vllm", "--enable-expert-parallel")):
        p = plan("h200", 8, engine, mdl=real("DeepSeek-V3"))
        assert p["decisions"]["tp_size"] == 8 and p["decisions"]["experts"] == 256
        assert option(p, flag) == ("8" if engine == "sglang" else True)
        assert p["decisions"]["quantization"] == "fp8" and option(p, "--quantization") is None
        assert p["fit"]["weights_per_gpu_bytes"] > 70 * 2 ** 30          # all 256 experts counted
        with pytest.raises(PlanError) as err:
            plan("h100", 2, engine, mdl=real("DeepSeek-V3"))
        message = str(err.value)
        for part in ("node-1", "2 x NVIDIA H100 80GB HBM3", "deepseek-ai/DeepSeek-V3", "does not fit", "needs",
                     "has", "such GPUs"):
            assert part in message, (engine, message)


def test_moe_models_over_several_gpus_get_the_engines_expert_parallel_flags():
    s = plan("h100", 2, "sglang", mdl=real("Qwen3-30B-A3B"))
    v = plan("h100", 2, "vllm", mdl=real("Qwen3-30B-A3B"))
    assert option(s, "--ep-size") == "2" and s["decisions"]["expert_parallel"] == 2
    assert option(v, "--enable-expert-parallel") is True
    flag_dump.check_argv(parser_of(s), s["args"])
    flag_dump.check_argv(parser_of(v), v["args"])
    # One GPU, or a dense model: nothing to spread.
    assert option(plan("h100", 1, "sglang", mdl=real("Qwen3-30B-A3B")), "--ep-size") is None
    assert option(plan("h100", 2, "vllm", mdl=real("Llama-3.1-8B-Instruct")), "--enable-expert-parallel") is None
    off = plan("h100", 2, "vllm", mdl=real("Qwen3-30B-A3B"), overrides={"--disable-expert-parallel": True})
    assert "--disable-expert-parallel" in off["args"] and "--enable-expert-parallel" not in off["args"]


def test_experts_that_do_not_split_evenly_stay_tensor_parallel_with_a_warning():
    six = real("Mixtral-8x7B-Instruct-v0.1")
    six["config"]["num_local_experts"] = 6
    p = plan("h100", 4, "sglang", mdl=six)
    assert option(p, "--ep-size") is None and any("do not split evenly" in w for w in p["warnings"])


@pytest.mark.parametrize("kwargs,parts", [
    (dict(name="Qwen3-30B-A3B", count=4, overrides={"--ep-size": 2}), ["--ep-size 2", "1 or the tensor parallel size 4"]),
    (dict(name="Qwen3-14B", count=2, overrides={"--ep-size": 2}), ["--ep-size", "not a mixture-of-experts", "remove"]),
])
def test_a_pinned_expert_parallel_size_is_checked(kwargs, parts):
    name = kwargs.pop("name")
    with pytest.raises(PlanError) as err:
        plan("h100", engine="sglang", mdl=real(name) if name in REPOS else sized(name), **kwargs)
    for part in parts:
        assert part in str(err.value)


def test_fp8_preset_takes_a_compressed_tensors_fp8_checkpoint():
    for engine in ("sglang", "vllm"):
        p = plan("h100", 1, engine, mdl=real("Meta-Llama-3.1-8B-Instruct-FP8"), preset="fp8")
        assert p["decisions"]["quantization"] == "compressed-tensors"
        assert option(p, "--quantization") is None                  # the engine reads quantization_config
        assert p["fit"]["weights_bytes"] == real("Meta-Llama-3.1-8B-Instruct-FP8")["weights_bytes"]
    with pytest.raises(PlanError, match="preset fp8 needs an unquantized or FP8 checkpoint; this one is gptq"):
        plan("h100", 1, "vllm", mdl=real("Qwen2.5-7B-Instruct-GPTQ-Int4"), preset="fp8")
    with pytest.raises(PlanError, match="preset fp8 needs native FP8"):
        plan(facts=cc_facts("8.0"), engine="vllm", mdl=real("Meta-Llama-3.1-8B-Instruct-FP8"), preset="fp8")


def test_gptq_checkpoints_are_left_to_the_engine_in_float16():
    for engine in ("sglang", "vllm"):
        p = plan("l40s", 1, engine, mdl=real("Qwen2.5-7B-Instruct-GPTQ-Int4"))
        assert p["decisions"]["quantization"] == "gptq" and option(p, "--quantization") is None
        assert p["decisions"]["dtype"] == "float16"


NEW_MODELS = sorted(REPOS)


def test_every_plan_of_the_new_fixtures_parses():
    planned = set()
    for card, count, engine, name, preset in itertools.product(("h100", "h200", "l40s", "rtx5090"), (1, 2, 4, 8),
                                                               ("sglang", "vllm"), NEW_MODELS,
                                                               ("balanced", "high_performance", "fp8")):
        try:
            p = plan(card, count, engine, mdl=real(name), preset=preset)
        except PlanError as exc:
            assert "does not fit" in str(exc) or "preset fp8" in str(exc), (card, count, engine, name, str(exc))
            continue
        flag_dump.check_argv(parser_of(p), p["args"])
        assert_full_names(p)
        planned.add(name)
    assert planned == set(NEW_MODELS)


# SGLang's own mem_fraction_static, transcribed from SGLang 0.5.23 sglang/srt/arg_groups/memory_hook.py
# (handle_gpu_memory_settings, reserve_for_graph_mb) and cuda_graph_hook.py
# (generate_prefill_cuda_graph_batch_sizes), independent of the knowledge table's numbers.
def sglang_default_fraction(gpu_mem, tp=1, decode_graph=True, prefill_graph=True, mla=False,
                            chunked=None, max_total_tokens=None, max_running=None):
    tiers = [(20 * 1024, 2048, 8, 8), (35 * 1024, 4096, 48, 160), (60 * 1024, 4096, 32, 160),
             (90 * 1024, 8192, 256, 512), (160 * 1024, 8192, 256, 512)]
    chunk, bs = 16384, 512
    for below, tier_chunk, small_bs, large_bs in tiers:
        if gpu_mem < below:
            chunk, bs = tier_chunk, (small_bs if tp < 4 else large_bs)
            break
    chunk = chunk if chunked is None else chunked
    if max_running is not None and bs > max_running:
        bs = max_running
    prefill_max_bs = min(8192, chunk) if mla else chunk
    if max_total_tokens is not None:
        prefill_max_bs = min(prefill_max_bs, max_total_tokens)
    sizes = [s for s in (list(range(4, 33, 4)) + list(range(48, 257, 16)) + list(range(288, 513, 32))
                         + list(range(576, 1024 + 1, 64)) + list(range(1280, 4096 + 1, 256))
                         + list(range(4608, prefill_max_bs + 1, 512))) if s <= prefill_max_bs]
    activation_tokens = max(chunk, 2048) if chunk > 0 else max(16384, 2048)
    reserved = 512 + activation_tokens * 1.5 + tp * 1 / 8 * 1024
    reserved += (bs * 2 if decode_graph else 0) + ((1.5 * 1024 if mla else len(sizes) * 8) if prefill_graph else 0)
    if gpu_mem > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mem - reserved) / gpu_mem, 3)


@pytest.mark.parametrize("card", ["h100", "h200", "rtx5090", "l40s"])
@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_sglang_fraction_is_sglangs_own_default(card, count):
    mem = gpu_facts(card)["memory_min_mib"]
    name = "Qwen3-14B" if card in ("h100", "h200") else "Qwen3-32B-AWQ"
    got = plan(card, count, "sglang", name)["decisions"]["memory_fraction"]
    assert got == sglang_default_fraction(mem, tp=count)
    mla = plan(card, count, "sglang", mdl=real("DeepSeek-V2-Lite-Chat"), preset="memory_optimized")
    assert mla["decisions"]["memory_fraction"] == sglang_default_fraction(mem, tp=mla["decisions"]["tp_size"], mla=True,
                                                                          max_running=64)
    no_graphs = plan(card, count, "sglang", name, "ultra_low_memory")["decisions"]["memory_fraction"]
    assert no_graphs == sglang_default_fraction(mem, tp=count, decode_graph=False, prefill_graph=False, max_running=16)


def test_the_prefill_graph_reserve_is_what_the_old_fraction_missed():
    # H100 / H200 / RTX 5090 / L40S, one GPU: the prefill CUDA-graph reserve lowers the fraction.
    for card in ("h100", "h200", "rtx5090", "l40s"):
        mem = gpu_facts(card)["memory_min_mib"]
        assert sglang_default_fraction(mem) < sglang_default_fraction(mem, prefill_graph=False)


@pytest.mark.parametrize("overrides,expect", [
    ({"--disable-cuda-graph": True}, dict(decode_graph=False, prefill_graph=False)),
    ({"--cuda-graph-backend-prefill": "disabled"}, dict(prefill_graph=False)),
    ({"--disable-decode-cuda-graph": True}, dict(decode_graph=False)),
    ({"--chunked-prefill-size": 4096}, dict(chunked=4096)),
    ({"--chunked-prefill-size": 16384}, dict(chunked=16384)),
    ({"--max-total-tokens": 2048}, dict(max_total_tokens=2048)),
])
def test_sglang_overrides_flow_into_the_fraction(overrides, expect):
    base = plan("h200", 1, "sglang")
    changed = plan("h200", 1, "sglang", overrides=overrides)
    mem = gpu_facts("h200")["memory_min_mib"]
    assert changed["decisions"]["memory_fraction"] == sglang_default_fraction(mem, **expect)
    assert changed["decisions"]["memory_fraction"] != base["decisions"]["memory_fraction"]
    assert changed["fit"]["max_context_fit"] != base["fit"]["max_context_fit"]
    assert float(option(changed, "--mem-fraction-static")) == changed["decisions"]["memory_fraction"]


def test_disable_cuda_graph_shows_in_the_decisions():
    p = plan("h100", 1, "sglang", overrides={"--disable-cuda-graph": True})
    assert p["decisions"]["cuda_graph"] is False and p["decisions"]["prefill_cuda_graph"] is False
    assert "--disable-cuda-graph" in p["args"] and "--cuda-graph-backend-decode" not in p["args"]


def test_sglang_max_total_tokens_caps_the_context():
    p = plan("h100", 1, "sglang", overrides={"--max-total-tokens": "8k"})
    assert p["decisions"]["context_length"] == 8000 == p["fit"]["kv_tokens_cap"]
    assert option(p, "--context-length") == "8000" and option(p, "--max-total-tokens") == "8k"
    with pytest.raises(PlanError, match="above --max-total-tokens 8000"):
        plan("h100", 1, "sglang", overrides={"--max-total-tokens": "8k", "--context-length": 16384})


def test_vllm_enforce_eager_and_batched_tokens_flow_into_the_reserve():
    base = plan("h100", 1, "vllm")
    eager = plan("h100", 1, "vllm", overrides={"--enforce-eager": True})
    assert eager["decisions"]["cuda_graph"] is False and "--enforce-eager" in eager["args"]
    assert eager["fit"]["reserve_bytes"] < base["fit"]["reserve_bytes"]
    assert eager["fit"]["max_context_fit"] > base["fit"]["max_context_fit"]
    big = plan("h100", 1, "vllm", overrides={"--max-num-batched-tokens": 32768})
    assert big["decisions"]["prefill_tokens"] == 32768 and base["decisions"]["prefill_tokens"] == 8192
    assert big["fit"]["reserve_bytes"] > base["fit"]["reserve_bytes"]
    assert big["fit"]["max_context_fit"] < base["fit"]["max_context_fit"]
    # The engine's default batch is 2048 tokens below 70 GiB (engine/arg_utils.py get_batch_defaults).
    assert plan("l40s", 1, "vllm")["decisions"]["prefill_tokens"] == 2048


@pytest.mark.parametrize("engine,flag", [("vllm", "--model"), ("sglang", "--model-path"), ("sglang", "--model")])
def test_a_model_override_is_refused(engine, flag):
    with pytest.raises(PlanError) as err:
        plan(engine=engine, overrides={flag: "/other"})
    message = str(err.value)
    assert message.startswith("node-1: ") and flag in message and "model.path" in message
