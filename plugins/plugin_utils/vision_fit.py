# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Vision-language models in the fit and on the command line (data/multimodal.yml).

The planner reads a VLM's language model from text_config; this module adds what the vision tower
costs and what an image may cost:
  tower weights   parameters counted from vision_config (depth, hidden_size, intermediate_size,
                  patch and merge sizes) x the serving dtype; used when weights_bytes is not given
  tokens/image    max_pixels / (patch_size x spatial_merge_size)^2 (the processor's upper bound)
  activations     one encoder forward over the largest image: per patch and layer the residual, the
                  normed input, q/k/v and the MLP's hidden activations, plus the pixels and the
                  merged embeddings; vLLM profiles this inside --gpu-memory-utilization (added to the
                  planner's reserve), SGLang runs it outside --mem-fraction-static (checked against
                  what the fraction leaves)
  image budget    images per request = min(max_images_per_request, context x share // tokens/image);
                  when the context cannot hold one full-size image, the processor's max_pixels is
                  lowered so that it can, through the engine's own processor option
The options are set explicitly: SGLang --limit-mm-data-per-request (+ --enable-multimodal for the
architectures SGLang leaves text-only by default), vLLM --limit-mm-per-prompt (its default is 999).
"""
from __future__ import annotations

import functools
import json
import os

import yaml

from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import DTYPE_BYTES, PlanError, gib

GATED_ACTS = ("silu", "swiglu")  # Qwen2.5-VL's vision MLP is gated (gate, up, down); Qwen3-VL's is fc1/fc2


@functools.lru_cache(maxsize=1)
def load_multimodal(path=None):
    path = path or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "data", "multimodal.yml")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def tower(config):
    """The vision tower's dimensions from config.json's vision_config; None for a text model."""
    vc = (config or {}).get("vision_config")
    if not isinstance(vc, dict) or not vc:
        return None
    hidden = vc.get("hidden_size") or vc.get("embed_dim")
    return {
        "depth": vc.get("depth") or vc.get("num_hidden_layers"),
        "hidden": hidden,
        "intermediate": vc.get("intermediate_size") or 4 * hidden,
        "gated": str(vc.get("hidden_act", "")).lower() in GATED_ACTS,
        "patch": vc.get("patch_size") or vc.get("spatial_patch_size"),
        "temporal_patch": vc.get("temporal_patch_size") or 1,
        # Qwen merges 2x2 patches; Llama 4's pixel shuffle (ratio 0.5) does the same.
        "merge": vc.get("spatial_merge_size") or int(round(1 / (vc.get("pixel_shuffle_ratio") or 1))),
        "image_size": vc.get("image_size"),
        "channels": vc.get("in_channels") or vc.get("in_chans") or 3,
        "out_hidden": vc.get("out_hidden_size") or hidden,
        "position_embeddings": vc.get("num_position_embeddings") or 0,
        # Qwen3-VL feeds these layers' features to the LM through one more merger each.
        "mergers": 1 + len(vc.get("deepstack_visual_indexes") or ()),
        "model_type": config.get("model_type"),
    }


def tower_parameters(t):
    """Parameters of the vision tower: patch embedding, blocks, position table, patch mergers."""
    h, i = t["hidden"], t["intermediate"]
    attention = 4 * h * h + 4 * h                     # qkv + output projection, with biases
    mlp = (3 if t["gated"] else 2) * h * i + 2 * i + h
    block = attention + mlp + 4 * h                   # two norms
    merged = h * t["merge"] ** 2
    merger = merged * merged + merged * t["out_hidden"] + 2 * merged
    patch_embed = t["channels"] * t["temporal_patch"] * t["patch"] ** 2 * h
    return patch_embed + t["depth"] * block + t["position_embeddings"] * h + t["mergers"] * merger


def processor_pixels(t, where):
    """(min_pixels, max_pixels, assumed): the table's range for the model_type, else one image of the
    tower's own image_size (fixed-resolution towers: SigLIP, CLIP, Llama 4's tiles), flagged as assumed."""
    entry = load_multimodal()["processors"].get(t["model_type"])
    if entry:
        return entry["min_pixels"], entry["max_pixels"], False
    if t.get("image_size"):
        pixels = t["image_size"] ** 2
        return pixels, pixels, True
    raise PlanError("%s: model_type %r has no image processor limits in data/multimodal.yml and its vision_config "
                    "no image_size: add its min_pixels/max_pixels (from the model's preprocessor_config.json) to "
                    "data/multimodal.yml, or serve it with weights_bytes and the engine's own image limits pinned "
                    "in engine_overrides" % (where, t["model_type"]))


def tokens_per_image(t, max_pixels):
    return max_pixels // (t["patch"] * t["merge"]) ** 2


def activation_bytes(t, max_pixels, dtype_bytes):
    """Peak activations of one encoder forward over the largest image (see the module docstring)."""
    tokens = tokens_per_image(t, max_pixels)
    patches = tokens * t["merge"] ** 2
    per_patch = 2 * t["hidden"] + 3 * t["hidden"] + (2 if t["gated"] else 1) * t["intermediate"]
    pixels = patches * t["channels"] * t["temporal_patch"] * t["patch"] ** 2
    return int((patches * per_patch + pixels + tokens * t["out_hidden"] * t["mergers"]) * dtype_bytes)


def vision_plan(engine, config, dtype, where):
    """What the fit needs before the context is known; None for a text model."""
    t = tower(config)
    if t is None:
        return None
    if not (t["depth"] and t["hidden"] and t["patch"]):
        raise PlanError("%s: vision_config lacks depth/hidden_size/patch_size: pass the model's real config.json"
                        % where)
    min_pixels, max_pixels, assumed = processor_pixels(t, where)
    dtype_bytes = DTYPE_BYTES.get(dtype, 2)
    activations = activation_bytes(t, max_pixels, dtype_bytes)
    inside = load_multimodal()["engines"][engine]["activations"] == "inside_fraction"
    return {"tower": t, "min_pixels": min_pixels, "max_pixels": max_pixels, "dtype_bytes": dtype_bytes,
            "parameters": tower_parameters(t), "weights_bytes": tower_parameters(t) * dtype_bytes,
            "activation_bytes": activations, "reserve_bytes": activations if inside else 0,
            "warning": ("%s: model_type %r is not in data/multimodal.yml: one image is planned as one %dx%d tile "
                        "(tiling and dynamic resolution not modelled); pin the engine's image limits in "
                        "engine_overrides if it takes more" % (where, t["model_type"], t["image_size"],
                                                               t["image_size"])) if assumed else None}


def _pinned_max_pixels(engine, overrides):
    """max_pixels the user pinned through the engine's processor option, or None."""
    spec = load_multimodal()["engines"][engine]
    value = (overrides or {}).get(spec["processor_flag"])
    if value is None:
        return None
    value = json.loads(value) if isinstance(value, str) else value
    if spec["processor_key"]:
        value = (value or {}).get(spec["processor_key"]) or {}
    return (value.get("size") or {}).get("longest_edge") or value.get("max_pixels")


def image_budget(vp, engine, config, context, fraction, gpu_memory_bytes, overrides, where):
    """(options {flag: value}, decisions) for a VLM once the context length is known."""
    spec = load_multimodal()["engines"][engine]
    data = load_multimodal()
    t = vp["tower"]
    options = {}
    pinned = _pinned_max_pixels(engine, overrides)
    max_pixels = int(pinned or vp["max_pixels"])
    budget = int(context * data["image_share_of_context"])
    if tokens_per_image(t, max_pixels) > budget:
        if pinned:
            raise PlanError("%s: the pinned max_pixels %d makes %d tokens per image; the context (%d tokens) has "
                            "room for %d. Fix: lower max_pixels in %s or raise the context length"
                            % (where, max_pixels, tokens_per_image(t, max_pixels), context, budget,
                               spec["processor_flag"]))
        max_pixels = budget * (t["patch"] * t["merge"]) ** 2
        if max_pixels < vp["min_pixels"]:
            raise PlanError("%s: a context of %d tokens holds no image (the processor's smallest is %d tokens). "
                            "Fix: raise the context length (more GPU memory, an FP8 KV cache) or serve a text model"
                            % (where, context, tokens_per_image(t, vp["min_pixels"])))
        size = {"size": {"longest_edge": max_pixels, "shortest_edge": vp["min_pixels"]}}
        options[spec["processor_flag"]] = {spec["processor_key"]: size} if spec["processor_key"] else size
    per_image = tokens_per_image(t, max_pixels)
    images = min(data["max_images_per_request"], max(1, budget // per_image))
    options[spec["limit_flag"]] = {"image": images}
    architecture = ((config or {}).get("architectures") or [None])[0]
    if spec["enable_flag"] and architecture in spec["needs_enable"]:
        options[spec["enable_flag"]] = True
    activations = activation_bytes(t, max_pixels, vp["dtype_bytes"])
    if spec["activations"] == "outside_fraction":
        free = int(gpu_memory_bytes * (1 - fraction))
        if activations > free:
            raise PlanError("%s: the vision encoder needs %s of activations for a %d-token image and memory "
                            "fraction %.3f leaves %s outside the KV pool. Fix: lower the memory fraction "
                            "(%s) or the processor's max_pixels (%s)"
                            % (where, gib(activations), per_image, fraction, gib(free),
                               "--mem-fraction-static", spec["processor_flag"]))
    decisions = {"tokens_per_image": per_image, "images_per_request": images, "max_pixels": max_pixels,
                 "tower_parameters": vp["parameters"], "activation_bytes": activations}
    return {flag: value for flag, value in options.items() if flag not in (overrides or {})}, decisions
