# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Model-fit preflight: will the weights and a useful KV cache fit in the GPUs' memory?

Numbers follow the engines (shared/reference, "Fit estimation"):
  weights   sum of *.safetensors sizes, or model.safetensors.index.json metadata.total_size;
            fallback: parameters counted from config.json x bytes per parameter
  per GPU   weights / tp (embeddings and lm_head are sharded too)
  KV/token  2 x layers x max(1, kv_heads // tp) x head_dim x kv_bytes  (per GPU)
  budget    GPU memory x memory fraction - activation reserve - weights per GPU
"""
from __future__ import annotations

import json
import os

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
    quant = config.get("quantization_config") or cfg.get("quantization_config") or {}
    return {
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
        "quant_method": quant.get("quant_method"),
        "quant_bits": quant.get("bits"),
        "quant_group_size": quant.get("group_size"),
        "vision_config": config.get("vision_config"),
    }


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def weights_on_disk(model_dir):
    """(bytes, source) from the files of a downloaded model, or (None, None)."""
    names = os.listdir(model_dir)
    shards = [n for n in names if n.endswith(".safetensors")]
    if shards:
        return sum(os.path.getsize(os.path.join(model_dir, n)) for n in shards), "safetensors"
    if "model.safetensors.index.json" in names:
        with open(os.path.join(model_dir, "model.safetensors.index.json"), encoding="utf-8") as handle:
            total = json.load(handle).get("metadata", {}).get("total_size")
        if isinstance(total, int) and total > 0:
            return total, "index.json"
    return None, None


def parameter_split(dims):
    """(embedding params, transformer-layer params) of a dense decoder counted from its config;
    None when the config lacks vocab_size or intermediate_size. Vision towers are not counted."""
    if not dims["vocab_size"] or not dims["intermediate_size"]:
        return None
    hidden, head_dim = dims["hidden_size"], dims["head_dim"]
    embed = dims["vocab_size"] * hidden * (1 if dims["tie_word_embeddings"] else 2)
    attention = 2 * hidden * dims["num_attention_heads"] * head_dim + 2 * hidden * dims["num_kv_heads"] * head_dim
    mlp = 3 * hidden * dims["intermediate_size"]
    return embed, dims["num_layers"] * (attention + mlp)


def estimate_weights(dims):
    """params x bytes: embeddings in the checkpoint dtype; layers at the quantized width plus one
    fp16 scale and a zero point per group when the checkpoint is AWQ/GPTQ-style."""
    split = parameter_split(dims)
    if split is None:
        return None
    embed, layers = split
    dtype_bytes = DTYPE_BYTES.get(dims["dtype"], 2)
    bits = dims["quant_bits"]
    if bits:
        group = dims["quant_group_size"] or 128
        layer_bytes = layers * (bits / 8 + (2 + bits / 8) / group)
    else:
        layer_bytes = layers * dtype_bytes
    return int(embed * dtype_bytes + layer_bytes)


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
    """Per GPU: KV heads are split over tp ranks, and replicated once tp exceeds them."""
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


def fit(dims, *, weights_bytes, gpu_memory_bytes, memory_fraction, reserve_bytes, tp, kv_bytes,
        min_context, context_cap=None, pinned_context=None, where="this host", hint=None):
    """Check that the model fits and pick the context length.

    Returns (fit dict, warnings). Raises PlanError when the weights plus min_context tokens of KV
    cache do not fit, or when a pinned context does not. `where` names the host and GPU; `hint`
    is a first fix to suggest when the model does not fit.
    """
    warnings = []
    weights_per_gpu = -(-weights_bytes // tp)
    usable = int(gpu_memory_bytes * memory_fraction) - reserve_bytes
    per_token = kv_bytes_per_token(dims, tp, kv_bytes)
    model_max = dims["max_position_embeddings"]
    floor = min(min_context, model_max) if model_max else min_context
    need = weights_per_gpu + floor * per_token
    if need > usable:
        raise PlanError(
            "%s: the model does not fit: it needs %s per GPU (weights %s at tp %d + KV cache for %d tokens "
            "%s) and has %s (%s x memory fraction %.3f - %s reserve). Fix: use %smore GPUs (tp), a quantized "
            "checkpoint (AWQ/GPTQ/FP8) or a smaller model"
            % (where, gib(need), gib(weights_per_gpu), tp, floor, gib(floor * per_token), gib(max(usable, 0)),
               gib(gpu_memory_bytes), memory_fraction, gib(reserve_bytes), hint + ", " if hint else ""))
    max_fit = (usable - weights_per_gpu) // per_token
    ceiling = min(v for v in (model_max, context_cap) if v) if (model_max or context_cap) else max_fit
    if pinned_context is not None:
        if model_max and pinned_context > model_max:
            raise PlanError("%s: context length %d is above the model's max_position_embeddings %d: lower it"
                            % (where, pinned_context, model_max))
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
        "max_position_embeddings": model_max,
        "context_length": context,
    }, warnings
