# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Load, validate and query the knowledge table (data/knowledge.yml).

The table holds every engine/GPU/driver fact the planner uses; this module only checks its shape
and answers lookups, so a wrong or incomplete table fails at load time with the path of the
offending key instead of deep inside a plan.
"""
from __future__ import annotations

import os
import re

import yaml

SCHEMA_VERSION = 1

_CC = re.compile(r"^\d+\.\d+$")
_WEIGHTS = ("checkpoint", "fp8_if_native", "fp8")
_KV = ("auto", "fp8_if_native", "fp8")


class KnowledgeError(ValueError):
    """The knowledge table is missing, unreadable or has the wrong shape."""


def default_path():
    """<collection root>/data/knowledge.yml, found from this file (plugins/module_utils/)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "data", "knowledge.yml")


def load_knowledge(path=None):
    """Read and validate the table; the result remembers where its flag dumps live."""
    path = path or default_path()
    try:
        with open(path, encoding="utf-8") as handle:
            # The C loader is ~20x faster; PyYAML built without libyaml falls back to Python.
            table = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise KnowledgeError("cannot read knowledge table %s: %s" % (path, exc)) from exc
    validate(table, source=path)
    table["flag_dump_dir"] = os.path.join(os.path.dirname(os.path.abspath(path)), "engine_flags")
    return table


# --------------------------------------------------------------------------------------------
# Lookups
# --------------------------------------------------------------------------------------------
def version_tuple(text):
    """'580.65.06' -> (580, 65, 6); raises ValueError on anything else."""
    parts = str(text).strip().split(".")
    if not all(p.isdigit() for p in parts):
        raise ValueError("not a dotted version: %r" % (text,))
    return tuple(int(p) for p in parts)


def arch_key(knowledge, compute_capability):
    """The table CC for a GPU: exact, else the highest listed CC of the same major whose minor
    is not above the GPU's (12.1 -> 12.0). None when nothing matches."""
    major, minor = version_tuple(compute_capability)[:2]
    same_major = [k for k in knowledge["archs"] if version_tuple(k)[0] == major and version_tuple(k)[1] <= minor]
    return max(same_major, key=version_tuple) if same_major else None


def engine_versions(knowledge, engine):
    return sorted(knowledge["engines"].get(engine, {}), key=version_tuple)


def min_driver_for_cuda(knowledge, cuda):
    return knowledge["cuda_driver_minimums"].get(str(cuda))


def max_cuda_for_driver(knowledge, driver_version):
    """Newest CUDA in the table whose minimum driver the given driver meets (None: none)."""
    driver = version_tuple(driver_version)
    ok = [c for c, d in knowledge["cuda_driver_minimums"].items() if version_tuple(d) <= driver]
    return max(ok, key=version_tuple) if ok else None


def driver_branch(driver_version):
    """'580.159.04' -> '580'."""
    return str(version_tuple(driver_version)[0])


def runs_kernels(cubins, compute_capability):
    """True when one SASS target runs on this CC: same major, minor not above the GPU's."""
    major, minor = version_tuple(compute_capability)[:2]
    return any(c // 10 == major and c % 10 <= minor for c in cubins)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _need(condition, where, what):
    if not condition:
        raise KnowledgeError("knowledge table: %s: %s" % (where, what))


def _is_version(text):
    try:
        version_tuple(text)
    except ValueError:
        return False
    return True


def _check_arch_engine(entry, where, engine):
    for key in ("attention_backends", "fp8_kv_backends", "quantization", "kv_cache_dtypes"):
        _need(isinstance(entry.get(key), list), where, "%s must be a list" % key)
    _need(entry.get("default_attention") in entry["attention_backends"], where,
          "default_attention must be one of attention_backends")
    _need(set(entry["fp8_kv_backends"]) <= set(entry["attention_backends"]), where,
          "fp8_kv_backends must be attention_backends")
    _need("auto" in entry["kv_cache_dtypes"], where, "kv_cache_dtypes must include auto")
    _need(isinstance(entry.get("cuda_graph"), bool), where, "cuda_graph must be true/false")
    if engine == "vllm":
        _need(isinstance(entry.get("flash_attn_versions"), list), where, "flash_attn_versions must be a list")


def _check_arch(table, cc, arch):
    where = "archs.%s" % cc
    _need(_CC.match(cc), where, "key must be a compute capability like '8.9'")
    _need(isinstance(arch, dict) and isinstance(arch.get("supported"), bool), where, "needs supported: true/false")
    _need(isinstance(arch.get("architecture"), str), where, "needs architecture")
    if not arch["supported"]:
        _need(isinstance(arch.get("reason"), str), where, "an unsupported CC needs a reason")
        return
    for key in ("bf16", "fp8_native", "fp8_kv_cache"):
        _need(isinstance(arch.get(key), bool), where, "%s must be true/false" % key)
    _need(arch.get("cuda_min") is None or arch["cuda_min"] in table["cuda_driver_minimums"], where,
          "cuda_min must be null or listed in cuda_driver_minimums")
    driver = arch.get("driver") or {}
    for key in ("min_branch", "default_branch"):
        _need(driver.get(key) in table["driver_branches"], where, "driver.%s must be a listed branch" % key)
    _need(driver.get("open_kernel_module") in ("required", "allowed"), where,
          "driver.open_kernel_module must be required or allowed")
    for engine in table["engines"]:
        _need(isinstance(arch.get(engine), dict), where, "needs an entry for engine %s" % engine)
        _check_arch_engine(arch[engine], "%s.%s" % (where, engine), engine)
        if arch["fp8_kv_cache"]:
            _need(arch[engine]["fp8_kv_backends"], "%s.%s" % (where, engine), "fp8 KV cache needs fp8_kv_backends")


def _check_engine_version(table, engine, version, entry):
    where = "engines.%s.%s" % (engine, version)
    _need(_is_version(version) and isinstance(entry, dict), where, "key must be a version, value a mapping")
    _need(isinstance((entry.get("image") or {}).get("repo"), str) and isinstance(entry["image"].get("tag"), str),
          where, "image needs repo and tag")
    _need(entry.get("cuda") in table["cuda_driver_minimums"], where, "cuda must be listed in cuda_driver_minimums")
    _need(isinstance(entry.get("port"), int), where, "port must be an integer")
    _need(isinstance(entry.get("entrypoint"), list) and entry["entrypoint"], where, "entrypoint must be a list")
    _need(entry.get("model_arg") in ("flag", "positional"), where, "model_arg must be flag or positional")
    _need(isinstance(entry.get("flag_dump"), str), where, "needs flag_dump")
    _need(all(isinstance(c, int) for c in entry.get("kernel_cubins") or [None]), where, "kernel_cubins: integers")
    _need(entry.get("api_key", {}).get("via") in ("env", "config_file"), where, "api_key.via: env or config_file")
    flags = entry.get("flags") or {}
    for key in ("host", "port", "served_name", "tp", "dtype", "quantization", "kv_cache_dtype", "attention",
                "memory_fraction", "context_length", "max_running_requests", "api_key"):
        _need(isinstance(flags.get(key), str), where, "flags.%s must name a flag" % key)
    _need((flags.get("model") is None) == (entry["model_arg"] == "positional"), where,
          "flags.model must be set exactly when model_arg is flag")
    _need(isinstance(entry.get("cuda_graph_off"), dict), where, "cuda_graph_off must map flags to values")
    _need(isinstance(entry.get("fp8_kv_cache_dtype"), str), where, "needs fp8_kv_cache_dtype")
    spec = entry.get("speculative") or {}
    _need(spec.get("style") in ("flags", "json") and isinstance(spec.get("algorithms"), dict), where,
          "speculative needs style (flags|json) and algorithms")
    memory = entry.get("memory") or {}
    _need(memory.get("fraction") in ("engine_formula", "preset"), where, "memory.fraction: engine_formula|preset")
    _need(isinstance(memory.get("activation_reserve_mib"), (int, float)), where, "memory.activation_reserve_mib")
    if memory["fraction"] == "engine_formula":
        _need(isinstance(memory.get("tiers"), list) and memory["tiers"][-1]["below_mib"] is None, where,
              "memory.tiers must end with below_mib: null")
    for key in ("removed_flags", "deprecated_flags"):
        _need(isinstance(entry.get(key), dict), where, "%s must be a mapping" % key)
    for flag, info in entry["removed_flags"].items():
        _need(flag.startswith("--") and isinstance(info, dict) and info.get("replacement"), where,
              "removed_flags.%s needs a replacement" % flag)


def _check_preset(table, name, preset):
    where = "presets.%s" % name
    _need(isinstance(preset, dict), where, "must be a mapping")
    _need(preset.get("weights") in _WEIGHTS, where, "weights must be one of %s" % ", ".join(_WEIGHTS))
    _need(preset.get("kv_cache") in _KV, where, "kv_cache must be one of %s" % ", ".join(_KV))
    _need(isinstance(preset.get("cuda_graph"), bool), where, "cuda_graph must be true/false")
    for engine, value in (preset.get("memory_fraction") or {}).items():
        _need(engine in table["engines"] and isinstance(value, float) and 0 < value <= 1, where,
              "memory_fraction.%s must be a fraction in (0, 1]" % engine)
    for key in ("max_running_requests", "context_cap"):
        value = preset.get(key)
        _need(value is None or (isinstance(value, int) and value > 0), where, "%s must be null or > 0" % key)
    _need(isinstance(preset.get("description"), str) and isinstance(preset.get("replaces"), str), where,
          "needs description and replaces")


def validate(table, source="knowledge table"):
    """Raise KnowledgeError naming the first key that is missing or malformed."""
    _need(isinstance(table, dict), source, "must be a mapping")
    _need(table.get("schema_version") == SCHEMA_VERSION, source,
          "schema_version must be %d (got %r)" % (SCHEMA_VERSION, table.get("schema_version")))
    _need(isinstance(table.get("table_version"), str), source, "needs table_version")
    _need(re.match(r"^\d{4}-\d{2}-\d{2}$", str(table.get("date", ""))), source, "date must be YYYY-MM-DD")
    for key in ("cuda_driver_minimums", "driver_branches", "archs", "engines", "presets", "default_versions"):
        _need(isinstance(table.get(key), dict) and table[key], source, "%s must be a non-empty mapping" % key)
    for cuda, driver in table["cuda_driver_minimums"].items():
        _need(_is_version(cuda) and _is_version(driver), "cuda_driver_minimums.%s" % cuda, "versions only")
    for branch, info in table["driver_branches"].items():
        _need(branch.isdigit() and {"type", "eol", "max_cuda"} <= set(info or {}), "driver_branches.%s" % branch,
              "needs type, eol and max_cuda")
    for engine, versions in table["engines"].items():
        _need(isinstance(versions, dict) and versions, "engines.%s" % engine, "needs at least one version")
        for version, entry in versions.items():
            _check_engine_version(table, engine, version, entry)
        _need(table["default_versions"].get(engine) in versions, "default_versions.%s" % engine,
              "must be one of the listed versions")
    for cc, arch in table["archs"].items():
        _check_arch(table, cc, arch)
    for name, preset in table["presets"].items():
        _check_preset(table, name, preset)
    _need(isinstance(table.get("min_context_tokens"), int) and table["min_context_tokens"] > 0, source,
          "min_context_tokens must be a positive integer")
    container = table.get("container") or {}
    _need(isinstance(container.get("ipc_mode"), str) and isinstance(container.get("ulimits"), list), source,
          "container needs ipc_mode and ulimits")
