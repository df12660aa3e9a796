# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Which files of a model snapshot the engines load as weights, and their size.

The rule is the engines' own (DefaultModelLoader._prepare_weights in
vllm/model_executor/model_loader/default_loader.py 0.33.0 and
sglang/srt/model_loader/loader.py 0.5.23, load format "auto"):
  * only the top directory is globbed, so `original/consolidated.00.pth` (Llama 3.x ships the Meta
    checkpoint beside the HF one) is never loaded;
  * the first of `*.safetensors`, `*.bin`, `*.pt` that matches anything wins;
  * safetensors are filtered by `model.safetensors.index.json` when it exists
    (filter_duplicate_safetensors_files: Mistral repos ship consolidated.safetensors beside the shards);
  * .bin/.pt drop the trainer's leftovers (filter_files_not_needed_for_inference).
vLLM loads `consolidated*.safetensors` alone when present (its "mistral" format); that file holds the
same tensors as the indexed shards, so the size is the same.

Pure Python on {relative path: size}: the hf_model module feeds it its manifest records.
"""
from __future__ import annotations

import json
import os

INDEX = "model.safetensors.index.json"
PATTERNS = (".safetensors", ".bin", ".pt")
NOT_FOR_INFERENCE = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")


def loaded_weight_files(sizes, index=None):
    """(sorted file names, format) the engines load from a snapshot's {relpath: size}; ([], None)
    when it has none. `index` is the parsed model.safetensors.index.json, if the snapshot has one."""
    top = [name for name in sizes if "/" not in name]
    for suffix in PATTERNS:
        files = [name for name in top if name.endswith(suffix)]
        if not files:
            continue
        if suffix == ".safetensors":
            listed = set((index or {}).get("weight_map", {}).values())
            if listed:
                files = [name for name in files if name in listed]
        else:
            files = [name for name in files if not name.endswith(NOT_FOR_INFERENCE)]
        return sorted(files), suffix.lstrip(".")
    return [], None


def weights_bytes(sizes, index=None):
    """Bytes of the weight files the engines load (None when there are none)."""
    files, _format = loaded_weight_files(sizes, index)
    return sum(sizes[name] for name in files) if files else None


def read_index(model_dir):
    """The parsed safetensors index of a model directory, or None (absent or unreadable)."""
    try:
        with open(os.path.join(model_dir, INDEX), encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def sizes_in_dir(model_dir):
    """{name: size} of the regular files at the top of a model directory."""
    return {entry.name: entry.stat().st_size for entry in os.scandir(model_dir) if entry.is_file()}
