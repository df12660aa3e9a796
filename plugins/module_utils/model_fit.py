# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Model-fit preflight: will the weights and a useful KV cache fit in the GPUs' memory?

Numbers follow the engines (shared/reference, "Fit estimation"; docs/planning.md "MoE, MLA and
quantized checkpoints"):
  weights   sum of *.safetensors sizes, or model.safetensors.index.json metadata.total_size;
            fallback: parameters counted from config.json (every expert of a MoE model, MLA
            projections) x bytes per parameter of the checkpoint's quantization
  per GPU   weights / tp (embeddings and lm_head are sharded too; with expert parallelism the
            experts are split instead of sharded: the same bytes per GPU)
  KV/token  GQA/MHA: 2 x layers x max(1, kv_heads // tp) x head_dim x kv_bytes  (per GPU)
            MLA:     layers x (kv_lora_rank + qk_rope_head_dim) x kv_bytes, on every TP rank
  budget    GPU memory x memory fraction - activation reserve - weights per GPU
"""
from __future__ import annotations

import json
import os

from ansible_collections.gpufleet.serving.plugins.module_utils import weight_files

GIB = 1024 ** 3
MIB = 1024 ** 2

# Bytes per element of the serving dtype and of KV-cache dtypes (4-bit ones carry a one-byte
# scale per 16 elements).
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}
KV_BYTES = dict(DTYPE_BYTES, fp8=1, fp8_e4m3=1, fp8_e5m2=1, mxfp8=1, nvfp4=0.5625, fp4_mx_block16=0.5625)


class PlanError(ValueError):
    """An input that cannot be planned; the message names what to fix."""


def gib(n_bytes):
    return "%.1f GiB" % (n_bytes / GIB)


# --------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------
def read_config(model_dir):
    """The parsed config.json of a model directory."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise PlanError("model config %s is missing: download the model (config.json and weights) first" % path) from exc
    except ValueError as exc:
        raise PlanError("model config %s is not valid JSON: %s" % (path, exc)) from exc


def text_config(config):
    """The language-model part: VLMs (Qwen2.5-VL, Qwen3-VL) keep it under text_config."""
    inner = config.get("text_config")
    return inner if isinstance(inner, dict) else config


# Other spellings of the same config fields (GPT-2 style, ChatGLM), as transformers' attribute_map
# and vLLM's config convertor read them.
ALIASES = {
    "num_attention_heads": ("n_head",),
    "num_hidden_layers": ("n_layer",),
    "hidden_size": ("n_embd",),
    "max_position_embeddings": ("n_positions",),
    "num_key_value_heads": ("n_head_kv", "num_kv_heads", "multi_query_group_num"),
}


def _field(cfg, key):
    for name in (key,) + ALIASES.get(key, ()):
        if cfg.get(name) is not None:
            return cfg[name]
    return None


def _positive_int(cfg, key, name, section):
    value = _field(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PlanError("model config of %s has no valid %s in %s (got %r): pass the model's real config.json"
                        % (name, key, section, value))
    return value


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mla(cfg):
    """DeepSeek-style multi-head latent attention: SGLang (configs/model_config.py) and vLLM
    (config/model.py use_mla) both key it on kv_lora_rank being set."""
    rank = _int_or_none(cfg.get("kv_lora_rank"))
    if not rank:
        return None
    return {
        "kv_lora_rank": rank,
        "qk_rope_head_dim": _int_or_none(cfg.get("qk_rope_head_dim")) or 0,
        "qk_nope_head_dim": _int_or_none(cfg.get("qk_nope_head_dim")) or 0,
        "v_head_dim": _int_or_none(cfg.get("v_head_dim")) or 0,
        "q_lora_rank": _int_or_none(cfg.get("q_lora_rank")),
    }


def _moe_layers(cfg, layers, experts):
    """Indices of the layers whose MLP is a mixture of experts (the others are dense)."""
    if "first_k_dense_replace" in cfg or "moe_layer_freq" in cfg:      # DeepSeek V2/V3, Kimi K2
        first = _int_or_none(cfg.get("first_k_dense_replace")) or 0
        freq = _int_or_none(cfg.get("moe_layer_freq")) or 1
        return [i for i in range(layers) if i >= first and i % freq == 0]
    if "decoder_sparse_step" in cfg or "mlp_only_layers" in cfg:     # Qwen2-MoE, Qwen3-MoE
        step = _int_or_none(cfg.get("decoder_sparse_step")) or 1
        dense = set(cfg.get("mlp_only_layers") or [])
        return [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    return list(range(layers)) if experts else []                    # Mixtral: every layer


def _moe(cfg, layers):
    """Experts per MoE layer and their sizes, or None for a dense model."""
    experts = next((_int_or_none(cfg.get(k)) for k in ("n_routed_experts", "num_experts", "num_local_experts")
                    if _int_or_none(cfg.get(k))), None)
    if not experts or experts < 2:
        return None
    expert_size = _int_or_none(cfg.get("moe_intermediate_size")) or _int_or_none(cfg.get("intermediate_size"))
    shared = _int_or_none(cfg.get("n_shared_experts")) or 0
    shared_size = shared * expert_size if shared else _int_or_none(cfg.get("shared_expert_intermediate_size")) or 0
    return {
        "num_experts": experts,
        "experts_per_token": _int_or_none(cfg.get("num_experts_per_tok")),
        "expert_intermediate_size": expert_size,
        "shared_intermediate_size": shared_size,
        "moe_layers": len(_moe_layers(cfg, layers, experts)),
    }


def quantization(config, cfg):
    """The checkpoint's weight quantization from quantization_config: method, bits, group size
    and whether the weights are floats (FP8) or packed integers (AWQ/GPTQ, compressed-tensors W4A16).

    compressed-tensors (llm-compressor) keeps the numbers in config_groups.*.weights; FP8 there is
    num_bits 8, type float (vLLM compressed_tensors.py _is_fp8_w8a8 / _is_fp8_w8a16)."""
    quant = config.get("quantization_config") or cfg.get("quantization_config") or {}
    method = quant.get("quant_method")
    if not method:
        return {"quant_method": None, "quant_bits": None, "quant_group_size": None, "quant_float": False}
    bits, group, is_float = quant.get("bits"), quant.get("group_size"), False
    if method == "fp8":
        bits, is_float = 8, True
    elif method == "mxfp4":  # gpt-oss: 4-bit floats, one 8-bit scale per 32 (vLLM quantization/mxfp4.py)
        bits, group = 4, 32
    elif method == "modelopt":  # NVIDIA ModelOpt: quant_algo FP8, or NVFP4 (4-bit, one FP8 scale per 16)
        algo = str(quant.get("quant_algo") or "").upper()
        if algo == "FP8":
            bits, is_float = 8, True
        elif algo == "NVFP4":
            bits, group = 4, quant.get("group_size") or 16
    elif method == "compressed-tensors":
        weights = [g.get("weights") or {} for g in (quant.get("config_groups") or {}).values() if isinstance(g, dict)]
        widths = [w.get("num_bits") for w in weights if isinstance(w.get("num_bits"), int)]
        bits = max(widths) if widths else None
        is_float = bool(weights) and all(w.get("type") == "float" for w in weights)
        group = next((w.get("group_size") for w in weights if w.get("group_size")), None)
    return {"quant_method": method, "quant_bits": bits, "quant_group_size": group, "quant_float": is_float}


def model_dims(config, name="the model"):
    """The numbers the planner needs from config.json, with the engines' fallbacks."""
    if not isinstance(config, dict) or not config:
        raise PlanError("model.config of %s is missing: pass the parsed config.json" % name)
    cfg = text_config(config)
    section = "config.json text_config" if cfg is not config else "config.json"
    heads = _positive_int(cfg, "num_attention_heads", name, section)
    layers = _positive_int(cfg, "num_hidden_layers", name, section)
    kv_heads = _field(cfg, "num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (_positive_int(cfg, "hidden_size", name, section) // heads)
    dims = {
        "architectures": list(config.get("architectures") or cfg.get("architectures") or []),
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "num_layers": layers,
        "head_dim": head_dim,
        "hidden_size": _field(cfg, "hidden_size") or heads * head_dim,
        "intermediate_size": cfg.get("intermediate_size"),
        "vocab_size": cfg.get("vocab_size"),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        "max_position_embeddings": _field(cfg, "max_position_embeddings"),
        # transformers' default when a config names no dtype (GPT-2 era checkpoints) is float32.
        "dtype": str(cfg.get("torch_dtype") or cfg.get("dtype") or config.get("torch_dtype")
                     or config.get("dtype") or "float32"),
        "mla": _mla(cfg),
        "moe": _moe(cfg, layers),
        "vision_config": config.get("vision_config"),
    }
    dims.update(quantization(config, cfg))
    return dims


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def weights_on_disk(model_dir):
    """(bytes, source) from the files of a downloaded model, or (None, None). The files are the ones
    the engines load (weight_files.py: never original/*.pth, index-filtered safetensors)."""
    sizes = weight_files.sizes_in_dir(model_dir)
    files, source = weight_files.loaded_weight_files(sizes, weight_files.read_index(model_dir))
    if files:
        return sum(sizes[n] for n in files), source
    names = list(sizes)
    if "model.safetensors.index.json" in names:
        with open(os.path.join(model_dir, "model.safetensors.index.json"), encoding="utf-8") as handle:
            total = json.load(handle).get("metadata", {}).get("total_size")
        if isinstance(total, int) and total > 0:
            return total, "index.json"
    return None, None


def _attention_params(dims):
    """Weights of one attention block. MLA (DeepSeek modeling): q_a/q_b (or q_proj), kv_a_proj_with_mqa,
    kv_b_proj, o_proj; otherwise q/o at num_heads x head_dim and k/v at num_kv_heads x head_dim."""
    hidden, heads = dims["hidden_size"], dims["num_attention_heads"]
    mla = dims["mla"]
    if not mla:
        return 2 * hidden * heads * dims["head_dim"] + 2 * hidden * dims["num_kv_heads"] * dims["head_dim"]
    qk_dim = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    rank = mla["q_lora_rank"]
    query = (hidden * rank + rank * heads * qk_dim) if rank else hidden * heads * qk_dim
    latent = hidden * (mla["kv_lora_rank"] + mla["qk_rope_head_dim"])
    up = mla["kv_lora_rank"] * heads * (mla["qk_nope_head_dim"] + mla["v_head_dim"])
    return query + latent + up + heads * mla["v_head_dim"] * hidden


def _mlp_params(dims):
    """Weights of every layer's MLP together: gated MLPs (gate, up, down = 3 matrices) for the dense
    layers, and for the MoE layers every routed expert, the shared experts and the router."""
    hidden, moe, dense_size = dims["hidden_size"], dims["moe"], dims["intermediate_size"]
    moe_layers = moe["moe_layers"] if moe else 0
    total = (dims["num_layers"] - moe_layers) * 3 * hidden * (dense_size or 0)
    if moe:
        per_layer = (moe["num_experts"] * moe["expert_intermediate_size"] + moe["shared_intermediate_size"])
        total += moe_layers * (3 * hidden * per_layer + hidden * moe["num_experts"])
    return total


def parameter_split(dims):
    """(embedding params, transformer-layer params) counted from the config; None when it lacks
    vocab_size or the MLP sizes. Vision towers are not counted."""
    moe = dims["moe"]
    dense_layers = dims["num_layers"] - (moe["moe_layers"] if moe else 0)
    if not dims["vocab_size"] or (dense_layers and not dims["intermediate_size"]) or (
            moe and not moe["expert_intermediate_size"]):
        return None
    embed = dims["vocab_size"] * dims["hidden_size"] * (1 if dims["tie_word_embeddings"] else 2)
    return embed, dims["num_layers"] * _attention_params(dims) + _mlp_params(dims)


def bytes_per_layer_param(dims):
    """Bytes per transformer-layer weight as stored: FP8 one byte (its block/channel scales are
    < 0.1%); AWQ/GPTQ-style integers bits/8 plus one fp16 scale and a zero point per group;
    otherwise the checkpoint dtype."""
    bits = dims["quant_bits"]
    if not bits:
        return DTYPE_BYTES.get(dims["dtype"], 2)
    if dims["quant_float"]:
        return bits / 8
    group = dims["quant_group_size"] if (dims["quant_group_size"] or 0) > 0 else None
    return bits / 8 + ((2 + bits / 8) / group if group else 0)


def estimate_weights(dims):
    """params x bytes: embeddings and lm_head in the checkpoint dtype (no method here quantizes
    them), layers at the quantized width."""
    split = parameter_split(dims)
    if split is None:
        return None
    embed, layers = split
    return int(embed * DTYPE_BYTES.get(dims["dtype"], 2) + layers * bytes_per_layer_param(dims))


def fp8_weights(weights_bytes, dims):
    """Weights after online FP8 quantization: linear layers drop to one byte per parameter,
    embeddings and lm_head stay in the checkpoint dtype. Unchanged when the split is unknown."""
    split = parameter_split(dims)
    if split is None:
        return weights_bytes
    embed, layers = split
    dtype_bytes = DTYPE_BYTES.get(dims["dtype"], 2)
    return int(weights_bytes * (embed * dtype_bytes + layers) / (embed * dtype_bytes + layers * dtype_bytes))


# --------------------------------------------------------------------------------------------
# KV cache and context
# --------------------------------------------------------------------------------------------
def kv_bytes_per_token(dims, tp, kv_bytes):
    """Per GPU. GQA/MHA: K and V heads are split over tp ranks, replicated once tp exceeds them.
    MLA: one compressed latent (kv_lora_rank) plus the shared rope key per layer, no V, and the
    same on every TP rank in both engines (SGLang pool_configurator._compute_cell_size has no tp
    term for MLA; vLLM config/model.py get_num_kv_heads returns 1 and MLAAttentionSpec has no V)."""
    mla = dims.get("mla")
    if mla:
        return int(dims["num_layers"] * (mla["kv_lora_rank"] + mla["qk_rope_head_dim"]) * kv_bytes)
    return int(2 * dims["num_layers"] * max(1, dims["num_kv_heads"] // tp) * dims["head_dim"] * kv_bytes)


def parse_context(value):
    """Tokens from an int or the engines' human-readable forms: 32k = 32000, 32K/32Ki = 32768."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    units = {"k": 10 ** 3, "K": 2 ** 10, "Ki": 2 ** 10, "M": 10 ** 6, "Mi": 2 ** 20}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(suffix)]) * units[suffix])
    if text.isdigit():
        return int(text)
    raise PlanError("context length %r is not a number of tokens (examples: 32768, 32k, 32Ki)" % (value,))


def gpus_needed(dims, weights_bytes, usable_bytes, kv_bytes, tokens, limit=64):
    """The smallest power-of-two GPU count (<= limit) of this size that holds the weights and
    `tokens` of KV cache, or None. MLA caches do not shrink with tp; GQA caches do."""
    n = 1
    while n <= limit:
        if -(-weights_bytes // n) + tokens * kv_bytes_per_token(dims, n, kv_bytes) <= usable_bytes:
            return n
        n *= 2
    return None


def fit(dims, *, weights_bytes, gpu_memory_bytes, memory_fraction, reserve_bytes, tp, kv_bytes,
        min_context, context_cap=None, pinned_context=None, where="this host", hint=None, token_cap=None):
    """Check that the model fits and pick the context length.

    Returns (fit dict, warnings). Raises PlanError when the weights plus min_context tokens of KV
    cache do not fit, or when a pinned context does not. `where` names the host and GPU; `hint`
    is a first fix to suggest when the model does not fit. `token_cap` caps the KV pool (SGLang
    --max-total-tokens: tp_worker.py serves at most min(context, pool) tokens per request).
    """
    warnings = []
    weights_per_gpu = -(-weights_bytes // tp)
    usable = int(gpu_memory_bytes * memory_fraction) - reserve_bytes
    per_token = kv_bytes_per_token(dims, tp, kv_bytes)
    model_max = dims["max_position_embeddings"]
    floor = min(min_context, model_max) if model_max else min_context
    need = weights_per_gpu + floor * per_token
    if need > usable:
        enough = gpus_needed(dims, weights_bytes, usable, kv_bytes, floor)
        raise PlanError(
            "%s: the model does not fit: it needs %s per GPU (weights %s at tp %d + KV cache for %d tokens "
            "%s) and has %s (%s x memory fraction %.3f - %s reserve). Fix: use %smore GPUs (tp%s), a quantized "
            "checkpoint (AWQ/GPTQ/FP8) or a smaller model"
            % (where, gib(need), gib(weights_per_gpu), tp, floor, gib(floor * per_token), gib(max(usable, 0)),
               gib(gpu_memory_bytes), memory_fraction, gib(reserve_bytes), hint + ", " if hint else "",
               ": at least %d such GPUs" % enough if enough else ""))
    max_fit = (usable - weights_per_gpu) // per_token
    if token_cap is not None:
        if token_cap < floor:
            raise PlanError("%s: --max-total-tokens %d leaves a KV pool below %d tokens: raise it or remove it"
                            % (where, token_cap, floor))
        if token_cap > max_fit:
            warnings.append("%s: --max-total-tokens %d is above the %d tokens the KV cache holds: the engine uses "
                            "the smaller" % (where, token_cap, max_fit))
        max_fit = min(max_fit, token_cap)
    ceiling = min(v for v in (model_max, context_cap) if v) if (model_max or context_cap) else max_fit
    if pinned_context is not None:
        if model_max and pinned_context > model_max:
            raise PlanError("%s: context length %d is above the model's max_position_embeddings %d: lower it"
                            % (where, pinned_context, model_max))
        if token_cap is not None and pinned_context > token_cap:
            raise PlanError("%s: pinned context length %d is above --max-total-tokens %d (the whole KV pool): lower "
                            "the context length or raise --max-total-tokens" % (where, pinned_context, token_cap))
        if pinned_context > max_fit:
            raise PlanError(
                "%s: pinned context length %d does not fit: the KV cache holds %d tokens (%.0f KiB per token "
                "next to %s of weights per GPU). Fix: lower the context length to <= %d, use an FP8 KV cache, "
                "or more GPUs" % (where, pinned_context, max_fit, per_token / 1024, gib(weights_per_gpu), max_fit))
        context = pinned_context
    else:
        context = min(ceiling, max_fit)
        if context < ceiling:
            warnings.append("%s: context length lowered from %d to %d tokens: that is what the KV cache holds"
                            % (where, ceiling, context))
    return {
        "weights_bytes": weights_bytes,
        "weights_per_gpu_bytes": weights_per_gpu,
        "gpu_memory_bytes": gpu_memory_bytes,
        "memory_fraction": memory_fraction,
        "reserve_bytes": reserve_bytes,
        "kv_budget_bytes": usable - weights_per_gpu,
        "kv_bytes_per_token": per_token,
        "max_context_fit": max_fit,
        "kv_tokens_cap": token_cap,
        "max_position_embeddings": model_max,
        "context_length": context,
    }, warnings
