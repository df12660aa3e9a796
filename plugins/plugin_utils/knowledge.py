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

SCHEMA_VERSION = 2

_CC = re.compile(r"^\d+\.\d+$")
# Engine release numbers: a dotted release with an optional PEP 440 post release (0.5.1.post2).
_ENGINE_VERSION = re.compile(r"^(\d+(?:\.\d+)*)(?:\.post(\d+))?$")
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
    dump_dir = os.path.join(os.path.dirname(os.path.abspath(path)), "engine_flags")
    validate(table, source=path, dump_dir=dump_dir)
    table["flag_dump_dir"] = dump_dir
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


def engine_version_key(text):
    """'0.5.1.post2' -> ((0, 5, 1), 2), '0.5.23' -> ((0, 5, 23), -1): sorts releases the way PyPI
    does (a post release after its release, before the next). Raises ValueError on anything else."""
    match = _ENGINE_VERSION.match(str(text).strip())
    if not match:
        raise ValueError("not an engine version: %r" % (text,))
    return tuple(int(p) for p in match.group(1).split(".")), int(match.group(2)) if match.group(2) else -1


def engine_versions(knowledge, engine):
    """The table's versions of `engine`, oldest first."""
    return sorted(knowledge["engines"].get(engine, {}), key=engine_version_key)


def arch_engine(knowledge, cc_key, engine, version):
    """archs.<cc_key>.<engine> as it holds for this engine version: the version's own `archs`
    entry for the CC (if any) replaces keys of the shared one."""
    merged = dict(knowledge["archs"][cc_key][engine])
    merged.update(((knowledge["engines"][engine][version].get("archs") or {}).get(cc_key)) or {})
    return merged


def version_blockers(knowledge, engine, version, compute_capability, driver=None, cuda=None):
    """Why this engine version cannot run on a GPU of this CC with this host driver (or the CUDA
    version the driver reports when the driver version is unknown): a list of short reasons,
    empty when it can. Only what the table knows: kernels, the architecture's CUDA floor, the
    image's CUDA against the driver."""
    entry = knowledge["engines"][engine][version]
    reasons = []
    if not runs_kernels(entry["kernel_cubins"], compute_capability):
        reasons.append("%s ships no sm_%s code" % (entry["kernel_package"], str(compute_capability).replace(".", "")))
    key = arch_key(knowledge, compute_capability)
    cuda_min = knowledge["archs"][key].get("cuda_min") if key else None
    if cuda_min and version_tuple(entry["cuda"]) < version_tuple(cuda_min):
        reasons.append("its image has CUDA %s, %s needs >= %s"
                       % (entry["cuda"], knowledge["archs"][key]["architecture"], cuda_min))
    need = min_driver_for_cuda(knowledge, entry["cuda"])
    if driver and version_tuple(driver) < version_tuple(need):
        reasons.append("its image needs CUDA %s (driver >= %s); driver %s supports CUDA %s"
                       % (entry["cuda"], need, driver, max_cuda_for_driver(knowledge, driver) or "< 12.6"))
    elif not driver and cuda and version_tuple(cuda) < version_tuple(entry["cuda"]):
        reasons.append("its image needs CUDA %s; the driver supports CUDA %s" % (entry["cuda"], cuda))
    return reasons


def choose_version(knowledge, engine, compute_capability, driver=None, cuda=None):
    """The newest version of `engine` that runs on this GPU and driver.

    Returns (version or None, reason, {skipped version: [reasons]}); `reason` says why that
    version (or why none) in words the plan and the summaries show."""
    skipped, name = {}, "%s in table %s" % (engine, knowledge["table_version"])
    for version in reversed(engine_versions(knowledge, engine)):
        blockers = version_blockers(knowledge, engine, version, compute_capability, driver, cuda)
        if not blockers:
            why = "; ".join("%s: %s" % (v, ", ".join(r)) for v, r in skipped.items())
            what = "kernels run on CC %s" % compute_capability
            if driver or cuda:
                what += " and whose CUDA %s image %s runs" % (
                    knowledge["engines"][engine][version]["cuda"], "driver %s" % driver if driver else "a CUDA %s driver" % cuda)
            return version, "newest %s whose %s%s" % (name, what, " (not %s)" % why if why else ""), skipped
        skipped[version] = blockers
    return None, "no %s runs on CC %s: %s" % (name, compute_capability, "; ".join(
        "%s: %s" % (v, ", ".join(r)) for v, r in skipped.items())), skipped


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


def _is_engine_version(text):
    try:
        engine_version_key(text)
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


_HTTP_503 = ("waiting", "dead")
_FORMULAS = ("reserve_for_graph", "reserve_tiers")


def _check_engine_version(table, engine, version, entry, dump_dir=None):
    where = "engines.%s.%s" % (engine, version)
    _need(_is_engine_version(version) and isinstance(entry, dict), where, "key must be a version, value a mapping")
    _need(isinstance((entry.get("image") or {}).get("repo"), str) and isinstance(entry["image"].get("tag"), str),
          where, "image needs repo and tag")
    _need(entry.get("cuda") in table["cuda_driver_minimums"], where, "cuda must be listed in cuda_driver_minimums")
    _need(isinstance(entry.get("port"), int), where, "port must be an integer")
    _need(isinstance(entry.get("entrypoint"), list) and entry["entrypoint"], where, "entrypoint must be a list")
    _need(entry.get("model_arg") in ("flag", "positional"), where, "model_arg must be flag or positional")
    _need(isinstance(entry.get("flag_dump"), str), where, "needs flag_dump")
    if dump_dir is not None:   # a version without its dump cannot be planned or checked
        _need(os.path.isfile(os.path.join(dump_dir, entry["flag_dump"])), where,
              "flag_dump %s is missing from %s: make it with scripts/ (docs/planning.md, adding a version)"
              % (entry["flag_dump"], dump_dir))
    _need(isinstance(entry.get("kernel_package"), str), where, "needs kernel_package")
    _need(isinstance(entry.get("kernel_cubins"), list) and entry["kernel_cubins"]
          and all(isinstance(c, int) for c in entry["kernel_cubins"]), where, "kernel_cubins: a list of integers")
    api_key = entry.get("api_key") or {}
    _need(api_key.get("via") in ("env", "config_file", "unsupported"), where,
          "api_key.via: env, config_file or unsupported")
    _need(api_key["via"] != "unsupported" or isinstance(api_key.get("reason"), str), where,
          "api_key.via unsupported needs a reason")
    flags = entry.get("flags") or {}
    for key in ("host", "port", "served_name", "tp", "dtype", "quantization", "kv_cache_dtype", "attention",
                "memory_fraction", "context_length", "max_running_requests", "api_key"):
        _need(isinstance(flags.get(key), str), where, "flags.%s must name a flag" % key)
    _need((flags.get("model") is None) == (entry["model_arg"] == "positional"), where,
          "flags.model must be set exactly when model_arg is flag")
    _need(api_key["via"] != "config_file" or isinstance(flags.get("config_file"), str), where,
          "api_key via config_file needs flags.config_file")
    _need(isinstance(entry.get("cuda_graph_off"), dict), where, "cuda_graph_off must map flags to values")
    phases = entry.get("cuda_graph_phases")
    _need(isinstance(phases, list) and set(phases) <= {"decode", "prefill"}, where,
          "cuda_graph_phases must list decode and/or prefill")
    _need(isinstance(entry.get("fp8_kv_cache_dtype"), str), where, "needs fp8_kv_cache_dtype")
    spec = entry.get("speculative") or {}
    _need(spec.get("style") in ("flags", "json") and isinstance(spec.get("algorithms"), dict), where,
          "speculative needs style (flags|json) and algorithms")
    spec_flags, values = spec.get("flags") or {}, spec.get("values")
    _need(isinstance(values, dict), where, "speculative.values must be a mapping")
    if spec["style"] == "flags":
        _need(all(isinstance(spec_flags.get(k), str) for k in ["algorithm", "draft_model"] + list(values)), where,
              "speculative.flags must name algorithm, draft_model and a flag for every value")
    else:
        _need(isinstance(spec_flags.get("config"), str), where, "speculative.flags.config must name a flag")
        _need(all(isinstance((spec.get("json_keys") or {}).get(k), str) for k in ("algorithm", "draft_model")),
              where, "speculative.json_keys must name algorithm and draft_model")
    http = entry.get("http") or {}
    _need(str(http.get("health", "")).startswith("/") and http.get("health_503") in _HTTP_503, where,
          "http needs health (a path) and health_503 (waiting|dead)")
    _need(str((http.get("version") or {}).get("path", "")).startswith("/") and http["version"].get("key"), where,
          "http.version needs path and key")
    _need(isinstance(http.get("inflight_metrics"), list) and http["inflight_metrics"], where,
          "http.inflight_metrics must list the running/queued gauges")
    memory = entry.get("memory") or {}
    _need(memory.get("fraction") in ("engine_formula", "preset"), where, "memory.fraction: engine_formula|preset")
    _need(isinstance(memory.get("activation_reserve_mib"), (int, float)), where, "memory.activation_reserve_mib")
    if memory["fraction"] == "engine_formula":
        _need(memory.get("formula") in _FORMULAS, where, "memory.formula: %s" % "|".join(_FORMULAS))
        _need(isinstance(memory.get("tiers"), list) and memory["tiers"][-1]["below_mib"] is None, where,
              "memory.tiers must end with below_mib: null")
        if memory["formula"] == "reserve_tiers":
            _need(isinstance(memory.get("reserve_tiers"), list) and memory["reserve_tiers"][-1]["below_mib"] is None,
                  where, "memory.reserve_tiers must end with below_mib: null")
    for key in ("removed_flags", "deprecated_flags"):
        _need(isinstance(entry.get(key), dict), where, "%s must be a mapping" % key)
    for flag, info in entry["removed_flags"].items():
        _need(flag.startswith("--") and isinstance(info, dict) and info.get("replacement"), where,
              "removed_flags.%s needs a replacement" % flag)
    for cc, changes in (entry.get("archs") or {}).items():
        _need(cc in table["archs"] and table["archs"][cc]["supported"] and isinstance(changes, dict),
              "%s.archs.%s" % (where, cc), "must be a supported CC of archs with a mapping of changes")


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


def validate(table, source="knowledge table", dump_dir=None):
    """Raise KnowledgeError naming the first key that is missing or malformed. With `dump_dir`,
    every version's flag_dump file must exist there."""
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
            _check_engine_version(table, engine, version, entry, dump_dir)
        _need(table["default_versions"].get(engine) in versions, "default_versions.%s" % engine,
              "must be one of the listed versions")
    for cc, arch in table["archs"].items():
        _check_arch(table, cc, arch)
    # The shared arch entries as each version changes them must still make sense.
    for engine, versions in table["engines"].items():
        for version, entry in versions.items():
            for cc in entry.get("archs") or {}:
                merged = arch_engine(table, cc, engine, version)
                _check_arch_engine(merged, "engines.%s.%s.archs.%s" % (engine, version, cc), engine)
                if table["archs"][cc]["fp8_kv_cache"]:
                    _need(merged["fp8_kv_backends"], "engines.%s.%s.archs.%s" % (engine, version, cc),
                          "fp8 KV cache needs fp8_kv_backends")
    for name, preset in table["presets"].items():
        _check_preset(table, name, preset)
    _need(isinstance(table.get("min_context_tokens"), int) and table["min_context_tokens"] > 0, source,
          "min_context_tokens must be a positive integer")
    container = table.get("container") or {}
    _need(isinstance(container.get("ipc_mode"), str) and isinstance(container.get("ulimits"), list), source,
          "container needs ipc_mode and ulimits")
