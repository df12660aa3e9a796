"""Model-fit preflight: config fields, weight sizes, KV bytes per token, context choice."""
import json

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import (
    GIB, PlanError, estimate_weights, fit, fp8_weights, kv_bytes_per_token, model_dims, parameter_split,
    parse_context, read_config, weights_on_disk)
from gpu_fixtures import MODELS_DIR, model

# (layers, attention heads, KV heads, head_dim, max_position_embeddings) of the real checkpoints.
REAL = {
    "Qwen2.5-0.5B-Instruct": (24, 14, 2, 64, 32768),
    "Qwen3-14B": (40, 40, 8, 128, 40960),
    "Qwen3-32B": (64, 64, 8, 128, 40960),
    "Qwen3-32B-AWQ": (64, 64, 8, 128, 40960),
    "Qwen3-VL-8B-Instruct": (36, 32, 8, 128, 262144),
    "tiny-lab": (2, 4, 2, 16, 4096),
    "DialoGPT-medium": (24, 16, 16, 64, 1024),     # GPT-2 spellings: n_layer, n_head, n_embd, n_positions
}


def dims(name):
    return model_dims(model(name)["config"], name)


@pytest.mark.parametrize("name", sorted(REAL))
def test_fixture_configs_read_like_the_engines_read_them(name):
    d = dims(name)
    got = (d["num_layers"], d["num_attention_heads"], d["num_kv_heads"], d["head_dim"], d["max_position_embeddings"])
    assert got == REAL[name]


def test_vl_models_use_text_config_and_qwen2_derives_head_dim():
    assert dims("Qwen3-VL-8B-Instruct")["hidden_size"] == 4096    # not the vision tower's 1152
    assert dims("Qwen3-VL-8B-Instruct")["vision_config"]["depth"] == 27
    assert "head_dim" not in model("Qwen2.5-0.5B-Instruct")["config"]
    assert dims("Qwen2.5-0.5B-Instruct")["head_dim"] == 896 // 14


def test_quantization_config_is_read():
    d = dims("Qwen3-32B-AWQ")
    assert (d["quant_method"], d["quant_bits"], d["quant_group_size"], d["dtype"]) == ("awq", 4, 128, "float16")
    assert dims("Qwen3-32B")["quant_method"] is None


def test_kv_bytes_per_token_formula():
    d = dims("Qwen3-14B")
    assert kv_bytes_per_token(d, 1, 2) == 2 * 40 * 8 * 128 * 2
    assert kv_bytes_per_token(d, 4, 2) == 2 * 40 * 2 * 128 * 2
    assert kv_bytes_per_token(d, 8, 1) == 2 * 40 * 1 * 128 * 1
    # Past the KV head count the heads are replicated: per-GPU KV stops shrinking.
    assert kv_bytes_per_token(d, 16, 2) == kv_bytes_per_token(d, 8, 2)


def test_parameter_estimate_matches_published_sizes():
    # Model cards: Qwen3-14B 14.8B, Qwen3-32B 32.8B, Qwen2.5-0.5B 0.49B parameters (bf16: 2 bytes each).
    assert estimate_weights(dims("Qwen3-14B")) / 2 == pytest.approx(14.8e9, rel=0.01)
    assert estimate_weights(dims("Qwen3-32B")) / 2 == pytest.approx(32.8e9, rel=0.01)
    assert estimate_weights(dims("Qwen2.5-0.5B-Instruct")) / 2 == pytest.approx(0.49e9, rel=0.02)


def test_awq_estimate_is_about_a_third_of_bf16():
    ratio = estimate_weights(dims("Qwen3-32B-AWQ")) / estimate_weights(dims("Qwen3-32B"))
    assert 0.25 < ratio < 0.35   # 4-bit layers plus scales, fp16 embeddings and lm_head


def test_fp8_weights_halve_the_linear_layers_only():
    d = dims("Qwen3-14B")
    bf16 = estimate_weights(d)
    assert bf16 / 2 < fp8_weights(bf16, d) < bf16 * 0.6


def test_weights_on_disk(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 300)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 200)
    assert weights_on_disk(str(tmp_path)) == (500, "safetensors")
    index_only = tmp_path / "index_only"
    index_only.mkdir()
    (index_only / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1234}}))
    assert weights_on_disk(str(index_only)) == (1234, "index.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert weights_on_disk(str(empty)) == (None, None)


def test_read_config(tmp_path):
    assert read_config(MODELS_DIR + "/Qwen3-14B")["num_hidden_layers"] == 40
    with pytest.raises(PlanError, match="config.json is missing"):
        read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        read_config(str(tmp_path))


@pytest.mark.parametrize("drop,field", [("num_attention_heads", "num_attention_heads"),
                                        ("num_hidden_layers", "num_hidden_layers")])
def test_missing_config_fields_are_named(drop, field):
    config = model("Qwen3-14B")["config"]
    del config[drop]
    with pytest.raises(PlanError, match=field):
        model_dims(config, "Qwen/Qwen3-14B")


def test_missing_field_in_text_config_says_so():
    config = model("Qwen3-VL-8B-Instruct")["config"]
    del config["text_config"]["num_attention_heads"]
    with pytest.raises(PlanError, match="text_config"):
        model_dims(config)


@pytest.mark.parametrize("value,tokens", [(4096, 4096), ("4096", 4096), ("32k", 32000), ("32K", 32768),
                                          ("32Ki", 32768), ("25.6k", 25600)])
def test_parse_context(value, tokens):
    assert parse_context(value) == tokens


def test_parse_context_rejects_words():
    with pytest.raises(PlanError, match="32k"):
        parse_context("lots")


def run_fit(name, memory_gib, fraction=0.9, reserve=0, tp=1, kv_bytes=2, **kwargs):
    d = dims(name)
    return fit(d, weights_bytes=estimate_weights(d), gpu_memory_bytes=int(memory_gib * GIB), memory_fraction=fraction,
               reserve_bytes=reserve, tp=tp, kv_bytes=kv_bytes, min_context=2048, where="h1: GPU X", **kwargs)


def test_fit_keeps_the_model_maximum_when_it_fits():
    result, warnings = run_fit("Qwen3-14B", 80)
    assert result["context_length"] == 40960 and not warnings
    assert result["max_context_fit"] == result["kv_budget_bytes"] // result["kv_bytes_per_token"]
    assert result["weights_per_gpu_bytes"] == result["weights_bytes"]


def test_fit_lowers_the_context_with_a_warning():
    result, warnings = run_fit("Qwen3-14B", 32)
    assert 2048 <= result["context_length"] == result["max_context_fit"] < 40960
    assert "lowered from 40960" in warnings[0]


def test_fit_applies_the_preset_cap():
    result, _unused = run_fit("Qwen3-14B", 80, context_cap=8192)
    assert result["context_length"] == 8192


def test_tensor_parallel_splits_the_weights():
    result, _unused = run_fit("Qwen3-32B", 80, tp=2)
    assert result["weights_per_gpu_bytes"] == -(-result["weights_bytes"] // 2)


def test_model_that_cannot_fit_names_need_and_have():
    with pytest.raises(PlanError) as err:
        run_fit("Qwen3-32B", 8, fraction=0.9, reserve=2 * GIB)
    message = str(err.value)
    d = dims("Qwen3-32B")
    need = estimate_weights(d) + 2048 * kv_bytes_per_token(d, 1, 2)
    assert "h1: GPU X" in message and "does not fit" in message
    assert "needs %.1f GiB" % (need / GIB) in message and "has %.1f GiB" % (8 * 0.9 - 2) in message


def test_pinned_context_too_large_is_an_error_not_a_lowering():
    with pytest.raises(PlanError, match="pinned context length 40000 does not fit"):
        run_fit("Qwen3-14B", 32, pinned_context=40000)
    with pytest.raises(PlanError, match="max_position_embeddings 40960"):
        run_fit("Qwen3-14B", 80, pinned_context=65536)
    result, warnings = run_fit("Qwen3-14B", 80, pinned_context=16384)
    assert result["context_length"] == 16384 and not warnings


# --------------------------------------------------------------------------------------------
# MLA, MoE and quantized checkpoints (docs/planning.md "MoE, MLA and quantized checkpoints")
# --------------------------------------------------------------------------------------------
# Published parameter counts (model cards / technical reports) of the fixture checkpoints.
PUBLISHED_PARAMS = {
    "DeepSeek-V3": 671e9,                    # "671B total" (main model, MTP module not loaded)
    "DeepSeek-V2-Lite-Chat": 15.7e9,
    "Qwen3-30B-A3B": 30.5e9,
    "Mixtral-8x7B-Instruct-v0.1": 46.7e9,
    "Llama-3.1-8B-Instruct": 8.03e9,
    "Meta-Llama-3.1-8B-Instruct-FP8": 8.03e9,
    "Qwen2.5-7B-Instruct-GPTQ-Int4": 7.62e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_of_moe_mla_and_quantized_models_matches_the_published_one(name):
    assert sum(parameter_split(dims(name))) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_moe_fields_of_each_family_are_read():
    v3, qwen, mixtral = dims("DeepSeek-V3"), dims("Qwen3-30B-A3B"), dims("Mixtral-8x7B-Instruct-v0.1")
    # DeepSeek: n_routed_experts, one shared expert, the first 3 layers dense (first_k_dense_replace).
    assert (v3["moe"]["num_experts"], v3["moe"]["moe_layers"]) == (256, 61 - 3)
    assert v3["moe"]["shared_intermediate_size"] == 1 * 2048
    # Qwen3-MoE: num_experts, decoder_sparse_step 1 and no mlp_only_layers: every layer sparse.
    assert (qwen["moe"]["num_experts"], qwen["moe"]["moe_layers"], qwen["moe"]["expert_intermediate_size"]) == (128, 48, 768)
    # Mixtral: num_local_experts of intermediate_size.
    assert (mixtral["moe"]["num_experts"], mixtral["moe"]["expert_intermediate_size"]) == (8, 14336)
    assert dims("Llama-3.1-8B-Instruct")["moe"] is None and dims("Llama-3.1-8B-Instruct")["mla"] is None


def test_qwen_mlp_only_layers_and_sparse_step_make_dense_layers():
    config = model("Qwen3-30B-A3B")["config"]
    config.update(mlp_only_layers=[0, 1], decoder_sparse_step=2)
    d = model_dims(config)
    # layers 1, 3, 5, ... are sparse ((i + 1) % 2 == 0), minus layer 1 from mlp_only_layers
    assert d["moe"]["moe_layers"] == 24 - 1
    assert sum(parameter_split(d)) < sum(parameter_split(dims("Qwen3-30B-A3B")))


def test_mla_kv_cache_is_the_latent_and_is_not_split_by_tp():
    for name in ("DeepSeek-V3", "DeepSeek-V2-Lite-Chat"):
        d = dims(name)
        latent = d["mla"]["kv_lora_rank"] + d["mla"]["qk_rope_head_dim"]
        assert latent == 512 + 64
        for tp in (1, 2, 8):
            assert kv_bytes_per_token(d, tp, 2) == d["num_layers"] * latent * 2
    # What the GQA formula would have said for DeepSeek-V3 (128 "KV heads" x 128): 57x more at tp 1.
    v3 = dims("DeepSeek-V3")
    assert 2 * 61 * 128 * 128 * 2 / kv_bytes_per_token(v3, 1, 2) > 50


def test_a_671b_moe_without_weights_bytes_is_estimated_near_its_size():
    estimate = estimate_weights(dims("DeepSeek-V3"))
    # FP8 linear layers (1 byte) + bf16 embeddings and lm_head; the repo's 163 safetensors hold
    # ~689 GB including the 14B MTP module the engines do not load without speculative decoding.
    assert 620 * GIB < estimate < 689e9
    assert estimate > 9 * estimate_weights(dims("Qwen3-30B-A3B"))


def test_quantization_of_compressed_tensors_fp8_and_gptq_is_recognised():
    fp8 = dims("Meta-Llama-3.1-8B-Instruct-FP8")
    assert (fp8["quant_method"], fp8["quant_bits"], fp8["quant_float"]) == ("compressed-tensors", 8, True)
    gptq = dims("Qwen2.5-7B-Instruct-GPTQ-Int4")
    assert (gptq["quant_method"], gptq["quant_bits"], gptq["quant_group_size"], gptq["quant_float"]) == ("gptq", 4, 128, False)
    v3 = dims("DeepSeek-V3")
    assert (v3["quant_method"], v3["quant_bits"], v3["quant_float"]) == ("fp8", 8, True)


def test_bytes_per_weight_of_quantized_checkpoints():
    bf16 = estimate_weights(dims("Llama-3.1-8B-Instruct"))
    fp8 = estimate_weights(dims("Meta-Llama-3.1-8B-Instruct-FP8"))
    # FP8 layers at one byte, embeddings and lm_head (ignored by the scheme) stay bf16:
    # RedHatAI's safetensors hold 9.08 GB.
    assert fp8 == pytest.approx(9.08e9, rel=0.02) and 0.5 < fp8 / bf16 < 0.6
    # GPTQ int4 g128 layers plus fp16 embeddings: Qwen's safetensors hold 5.58 GB.
    assert estimate_weights(dims("Qwen2.5-7B-Instruct-GPTQ-Int4")) == pytest.approx(5.58e9, rel=0.03)


def test_a_model_too_big_names_how_many_gpus_would_hold_it():
    d = dims("DeepSeek-V3")
    with pytest.raises(PlanError) as err:
        fit(d, weights_bytes=estimate_weights(d), gpu_memory_bytes=80 * GIB, memory_fraction=0.83, reserve_bytes=0,
            tp=2, kv_bytes=1, min_context=2048, where="h1: 2 x H100")
    message = str(err.value)
    assert "h1: 2 x H100" in message and "does not fit" in message and "at least 16 such GPUs" in message


def test_max_total_tokens_caps_the_kv_pool_and_the_context():
    result, warnings = run_fit("Qwen3-14B", 80, token_cap=8192)
    assert result["max_context_fit"] == 8192 == result["context_length"] and result["kv_tokens_cap"] == 8192
    with pytest.raises(PlanError, match="above --max-total-tokens 8192"):
        run_fit("Qwen3-14B", 80, token_cap=8192, pinned_context=16384)
    with pytest.raises(PlanError, match="--max-total-tokens 1024 leaves a KV pool below 2048"):
        run_fit("Qwen3-14B", 80, token_cap=1024)
    _unused, warnings = run_fit("Qwen3-14B", 32, token_cap=10 ** 7)
    assert any("uses the smaller" in w for w in warnings)


# gpt-oss-20b's config.json (openai/gpt-oss-20b): MoE experts in MXFP4. Its safetensors hold 13.8 GB.
GPT_OSS_20B = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
               "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64,
               "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088, "max_position_embeddings": 131072,
               "num_local_experts": 32, "num_experts_per_tok": 4, "torch_dtype": "bfloat16",
               "tie_word_embeddings": False, "quantization_config": {"quant_method": "mxfp4"}}


def test_mxfp4_and_nvfp4_checkpoints_are_sized_at_about_four_bits():
    dims = model_dims(GPT_OSS_20B)
    assert (dims["quant_method"], dims["quant_bits"], dims["quant_group_size"]) == ("mxfp4", 4, 32)
    assert estimate_weights(dims) == pytest.approx(13.8e9, rel=0.1)
    nvfp4 = dict(GPT_OSS_20B, quantization_config={"quant_method": "modelopt", "quant_algo": "NVFP4"})
    assert model_dims(nvfp4)["quant_bits"] == 4 and model_dims(nvfp4)["quant_group_size"] == 16
    fp8 = dict(GPT_OSS_20B, quantization_config={"quant_method": "modelopt", "quant_algo": "FP8"})
    assert (model_dims(fp8)["quant_bits"], model_dims(fp8)["quant_float"]) == (8, True)
