# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Turn GPU facts + engine + model + preset + overrides into a launch plan (docs/CONTRACTS.md).

Pure Python: every fact comes from the knowledge table and the engine's flag dump, every choice
is explained in docs/planning.md. Any input that cannot be planned raises PlanError with one
message naming what to fix.
"""
from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json

from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump
from ansible_collections.gpufleet.serving.plugins.plugin_utils import vision_fit
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import (
    arch_engine, arch_key, choose_version, driver_branch, engine_versions, load_knowledge, max_cuda_for_driver,
    min_driver_for_cuda, runs_kernels, version_blockers, version_tuple)
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import (
    DTYPE_BYTES, GIB, KV_BYTES, MIB, PlanError, estimate_weights, fit, fp8_weights, model_dims, parse_context)

__all__ = ["PlanError", "build_plan", "plan_hash"]

DEFAULT_PRESET = "balanced"
ENGINE_NAMES = {"sglang": "SGLang", "vllm": "vLLM"}
# Settings only the planner writes: the model comes from model.path, the API key never goes on argv.
OWNED = ("model", "api_key", "config_file")
# The semantic settings an override may pin; the planner validates them against the GPU.
SEMANTIC = ("host", "port", "served_name", "tp", "dtype", "quantization", "kv_cache_dtype", "attention",
            "memory_fraction", "context_length", "max_running_requests", "expert_parallel")


# Not part of what runs: words about the plan (the reason names the host's driver, whose patch
# release must not recreate a container whose version and arguments stay the same).
UNHASHED = ("warnings", "plan_hash", "engine_version_reason")


def plan_hash(plan):
    """sha256 of the canonical JSON of the plan without its words (warnings, the version reason)."""
    body = {k: v for k, v in plan.items() if k not in UNHASHED}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _gpu(facts, host):
    if not isinstance(facts, dict):
        raise PlanError("%s: gpu_facts must be the gpufleet_gpu fact dict (run gpufleet.serving.gpu_facts)" % host)
    if facts.get("state") != "healthy":
        raise PlanError("%s: GPU facts state is %r (%s): fix the NVIDIA driver/GPU before planning"
                        % (host, facts.get("state"), facts.get("message") or "no message"))
    gpus = facts.get("gpus") or []
    if not gpus or not facts.get("compute_capability"):
        raise PlanError("%s: GPU facts list no GPU with a compute_capability: re-gather gpufleet_gpu facts" % host)
    # MIG (docs/planning.md "MIG"): a GPU in MIG mode cannot be handed whole to a container; only the
    # one-device view engine_deploy builds per MIG device (a GPU entry carrying `mig_device`) is planned.
    whole = [str(g.get("index")) for g in gpus if g.get("mig_mode") == "Enabled" and not g.get("mig_device")]
    if whole:
        raise PlanError("%s: GPU %s is in MIG mode, so a container cannot use the whole GPU: set engine_instances "
                        "to one per MIG device (mig: <index in gpufleet_gpu.mig_devices>), or disable MIG "
                        "(nvidia-smi -i %s -mig 0, then reset the GPU)" % (host, ", ".join(whole), ",".join(whole)))
    if len(gpus) > 1 and any(g.get("mig_device") for g in gpus):
        raise PlanError("%s: one engine cannot span several MIG devices (MIG devices have no peer-to-peer, so no "
                        "tensor parallelism): give each MIG device its own engine_instances entry" % host)
    memory = facts.get("memory_min_mib") or min(g["memory_mib"] for g in gpus)
    return {
        "cc": str(facts["compute_capability"]),
        "count": int(facts.get("count") or len(gpus)),
        "memory_mib": int(memory),
        "name": gpus[0].get("name", "GPU"),
        "indices": [g.get("index", i) for i, g in enumerate(gpus)],
        "driver": facts.get("driver_version"),
        "cuda": facts.get("cuda_version"),
        "kernel_module": facts.get("kernel_module"),
        "homogeneous": facts.get("homogeneous", True),
    }


def _engine(kn, engine, version, host):
    """(version, table entry) of a pinned version; without one, the table's default_versions entry
    (only for what needs no GPU facts: image_ref before the GPU is known)."""
    if engine not in kn["engines"]:
        raise PlanError("%s: engine %r is unknown: choose one of %s" % (host, engine, ", ".join(sorted(kn["engines"]))))
    version = str(version or kn["default_versions"][engine])
    if version not in kn["engines"][engine]:
        raise PlanError("%s: engine_version %r of %s is not in knowledge table %s: choose one of %s, or remove "
                        "engine_version (the planner picks the newest that runs on the host's GPU)"
                        % (host, version, engine, kn["table_version"], ", ".join(engine_versions(kn, engine))))
    return version, kn["engines"][engine][version]


def _version(kn, engine, pinned, gpu, host, warnings):
    """(version, entry, reason): the pinned engine_version, else the newest one of the table whose
    kernels run on this GPU and whose image CUDA the driver supports (knowledge.choose_version).
    When none does, the newest is returned and the kernel/driver checks say why and what to do."""
    if pinned:
        version, ev = _engine(kn, engine, pinned, host)
        return version, ev, "pinned by engine_version"
    _engine(kn, engine, None, host)      # an unknown engine is refused here
    driver = gpu["driver"]
    version, reason, skipped = choose_version(kn, engine, gpu["cc"], driver, None if driver else gpu["cuda"])
    if version is None:   # the checks below say why and what to do: about the driver when kernels would run
        runs = [v for v in engine_versions(kn, engine) if runs_kernels(kn["engines"][engine][v]["kernel_cubins"], gpu["cc"])]
        version = (runs or engine_versions(kn, engine))[-1]
        return version, kn["engines"][engine][version], reason
    newer_blocked_by_driver = [v for v, why in skipped.items()
                               if not version_blockers(kn, engine, v, gpu["cc"])]
    if newer_blocked_by_driver:
        newest = newer_blocked_by_driver[0]
        need = min_driver_for_cuda(kn, kn["engines"][engine][newest]["cuda"])
        warnings.append("%s: planned %s %s; %s %s runs on this GPU with NVIDIA driver >= %s (R%s): upgrade the "
                        "driver to get it" % (host, ENGINE_NAMES.get(engine, engine), version,
                                              ENGINE_NAMES.get(engine, engine), newest, need, driver_branch(need)))
    return version, kn["engines"][engine][version], reason


def _arch(kn, gpu, host, warnings):
    """(table CC key, arch entry) of the GPU."""
    key = arch_key(kn, gpu["cc"])
    if key is None:
        raise PlanError("%s: %s has compute capability %s, which knowledge table %s does not list: add it to "
                        "data/knowledge.yml" % (host, gpu["name"], gpu["cc"], kn["table_version"]))
    arch = kn["archs"][key]
    if not arch["supported"]:
        raise PlanError("%s: %s (CC %s, %s) is not supported: %s"
                        % (host, gpu["name"], gpu["cc"], arch["architecture"], arch["reason"]))
    if key != gpu["cc"]:
        warnings.append("%s: CC %s is planned with the CC %s entry of the knowledge table" % (host, gpu["cc"], key))
    return key, arch


def _alternatives(kn, gpu, usable):
    """'engine X.Y' strings of table entries whose kernels run on the GPU and pass `usable`."""
    return ["engine=%s engine_version=%s" % (e, v) for e in sorted(kn["engines"]) for v in engine_versions(kn, e)
            if runs_kernels(kn["engines"][e][v]["kernel_cubins"], gpu["cc"]) and usable(kn["engines"][e][v])]


def _check_kernels(kn, engine, version, ev, arch, gpu, where, pinned):
    if runs_kernels(ev["kernel_cubins"], gpu["cc"]):
        return
    others = _alternatives(kn, gpu, lambda entry: True)
    same_engine = [o.split("engine_version=")[1] for o in others if o.startswith("engine=%s " % engine)]
    if pinned and same_engine:    # the inventory pins a version; another version of the same engine runs
        fix = ("set engine_version to %s (or remove engine_version: the planner picks the newest that runs here)"
               % " or ".join(reversed(same_engine)))
    else:
        fix = "set " + " or ".join(others) if others else "use a GPU of CC 8.0 or newer"
    raise PlanError("%s: %s%s %s%s cannot run on CC %s (%s): %s ships no sm_%s code%s. Fix: %s"
                    % (where, "engine_version %s pins " % version if pinned else "", ENGINE_NAMES.get(engine, engine),
                       version, ", which" if pinned else "", gpu["cc"], arch["architecture"], ev["kernel_package"],
                       gpu["cc"].replace(".", ""),
                       "" if same_engine else " and knowledge table %s has no %s version that does"
                       % (kn["table_version"], ENGINE_NAMES.get(engine, engine)), fix))


def _check_driver(kn, engine, version, ev, arch, gpu, image, where, warnings):
    name = "%s %s" % (ENGINE_NAMES.get(engine, engine), version)
    if arch["cuda_min"] and version_tuple(ev["cuda"]) < version_tuple(arch["cuda_min"]):
        raise PlanError("%s: %s needs an image built with CUDA >= %s; %s (%s) has CUDA %s: pick a newer engine_version"
                        % (where, arch["architecture"], arch["cuda_min"], image, name, ev["cuda"]))
    need = min_driver_for_cuda(kn, ev["cuda"])
    driver, fix = gpu["driver"], None
    if driver:
        if version_tuple(driver) < version_tuple(need):
            fix = "host driver %s supports CUDA %s" % (driver, max_cuda_for_driver(kn, driver) or "< 12.6")
        elif int(driver_branch(driver)) < int(arch["driver"]["min_branch"]):
            raise PlanError("%s: %s needs NVIDIA driver branch R%s or newer; the host has %s: upgrade to R%s"
                            % (where, arch["architecture"], arch["driver"]["min_branch"], driver,
                               arch["driver"]["default_branch"]))
    elif gpu["cuda"] and version_tuple(gpu["cuda"]) < version_tuple(ev["cuda"]):
        fix = "host driver supports CUDA %s" % gpu["cuda"]
    if fix:
        def fits(entry):
            return driver and version_tuple(min_driver_for_cuda(kn, entry["cuda"])) <= version_tuple(driver)
        others = _alternatives(kn, gpu, fits)
        raise PlanError("%s: image %s needs CUDA %s but the %s. Fix: upgrade the NVIDIA driver to >= %s (R%s)%s"
                        % (where, image, ev["cuda"], fix, need, driver_branch(need),
                           " or set " + " or ".join(others) if others else ""))
    if arch["driver"]["open_kernel_module"] == "required":
        if gpu["kernel_module"] == "proprietary":
            raise PlanError("%s: %s GPUs need the open NVIDIA kernel modules; the host runs the proprietary ones: "
                            "install the open flavour of driver R%s" % (where, arch["architecture"],
                                                                        arch["driver"]["default_branch"]))
        if gpu["kernel_module"] is None:
            warnings.append("%s: could not tell the kernel module flavour; %s needs the open modules"
                            % (where, arch["architecture"]))
    branch = kn["driver_branches"].get(driver_branch(driver)) if driver else None
    if branch and branch["eol"] < kn["date"][:7]:
        warnings.append("%s: driver branch R%s reached end of life in %s: move to R%s"
                        % (where, driver_branch(driver), branch["eol"], arch["driver"]["default_branch"]))


# --------------------------------------------------------------------------------------------
# Overrides: engine flags by their full names
# --------------------------------------------------------------------------------------------
class _Flags:
    """The flag dump of one engine version, with lookups by any spelling. Read-only once built."""

    def __init__(self, path, engine, version):
        entries = flag_dump.load_dump(path)
        self.index = flag_dump.index_dump(entries)
        self.parser = flag_dump.build_parser_from_dump(
            entries, prog="%s %s" % (engine, version), positionals=flag_dump.SUBCOMMAND_POSITIONALS.get(engine, ()))
        self.label = "%s %s" % (ENGINE_NAMES.get(engine, engine), version)

    def canonical(self, flag):
        return self.index[flag]["flags"][0]

    def choices(self, flag):
        return [c for c in self.index[flag]["choices"] or () if c is not None]


@functools.lru_cache(maxsize=16)
def _flags(path, engine, version):
    # Parsing a dump and building its parser costs more than the rest of a plan; a play plans
    # many hosts with the same few engine versions.
    return _Flags(path, engine, version)


@functools.lru_cache(maxsize=1)
def _default_knowledge():
    return load_knowledge()


def _override_value(flags, name, value):
    """Check one override value against its dump entry; return it as the planner stores it."""
    entry = flags.index[name]
    kind = flag_dump.flag_kind(entry)
    if kind in ("switch", "paired"):
        if value is not None and not isinstance(value, bool):
            raise PlanError("override %s takes true/false, not %r" % (name, value))
        if kind == "paired" and value is not None and name in flag_dump.negative_spellings(entry["flags"]):
            return not value
        return value
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if len(values) > 1 and entry["nargs"] not in ("+", "*"):
        raise PlanError("override %s takes one value, not a list" % name)
    choices = flags.choices(name)
    for item in values:
        if isinstance(item, (bool, list)):
            raise PlanError("override %s takes a value, not %r" % (name, item))
        if choices and str(item) not in [str(c) for c in choices]:
            raise PlanError("override %s: %r is not a valid choice for %s: choose one of %s"
                            % (name, item, flags.label, ", ".join(str(c) for c in choices)))
    return value


def _overrides(overrides, flags, ev):
    """{canonical flag: value} after checking names and values against the dump and the table."""
    if overrides is None:
        return {}, []
    if not isinstance(overrides, dict):
        raise PlanError("overrides must be a mapping of full flag names to values, e.g. {'--mem-fraction-static': 0.8}")
    owned = ({ev["flags"].get(k) for k in OWNED} | set(ev.get("owned_flags") or ())) - {None}
    result, warnings = {}, []
    for key, value in overrides.items():
        name = key if str(key).startswith("-") else "--" + str(key)
        if name not in flags.index:
            removed = ev["removed_flags"].get(name)
            if removed:
                raise PlanError("override %s: %s has no such flag (gone since %s); use %s"
                                % (name, flags.label, removed["since"], removed["replacement"]))
            close = difflib.get_close_matches(name, flags.index, n=1)
            raise PlanError("override %s: %s has no flag %s (full flag names only)%s"
                            % (name, flags.label, name, "; did you mean %s?" % close[0] if close else ""))
        canonical = flags.canonical(name)
        if canonical in owned:
            raise PlanError("override %s is set by the planner: %s" % (name, (
                "remove it from the overrides and give the model as model.path"
                if canonical == ev["flags"].get("model") or canonical in (ev.get("owned_flags") or ())
                else "pass api_key=true; the key is delivered by %s, never on the command line"
                % ev["api_key"]["via"])))
        if name in ev["deprecated_flags"]:
            warnings.append("override %s is deprecated in %s: use %s" % (name, flags.label, ev["deprecated_flags"][name]))
        result[canonical] = _override_value(flags, name, value)
    return result, warnings


# --------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------
def _tp_ok(dims, tp):
    kv = dims["num_kv_heads"]
    return dims["num_attention_heads"] % tp == 0 and (kv % tp == 0 if kv >= tp else tp % kv == 0)


def _choose_tp(dims, gpu, pinned, flag, where):
    rule = "%d attention heads, %d KV heads" % (dims["num_attention_heads"], dims["num_kv_heads"])
    if pinned is not None:
        tp = _number(pinned, flag, where)
        if tp < 1 or tp > gpu["count"]:
            raise PlanError("%s: engine_overrides %s %d needs %d GPUs; the host has %d: set it to %d or less, "
                            "or remove it (the planner picks the largest the model allows)"
                            % (where, flag, tp, tp, gpu["count"], gpu["count"]))
        if not _tp_ok(dims, tp):
            good = [n for n in range(1, gpu["count"] + 1) if _tp_ok(dims, n)]
            raise PlanError("%s: tensor parallel size %d does not divide the model (%s): use one of %s"
                            % (where, tp, rule, ", ".join(map(str, good))))
        return tp
    return max(n for n in range(1, gpu["count"] + 1) if gpu["count"] % n == 0 and _tp_ok(dims, n))


def _choose_dtype(arch, dims, pinned, where, warnings):
    # A pinned "auto" is resolved the way the engines resolve it, so the plan stays explicit.
    if pinned not in (None, "auto"):
        if pinned == "bfloat16" and not arch["bf16"]:
            raise PlanError("%s: --dtype bfloat16 needs CC >= 8.0; %s has no bf16: use float16"
                            % (where, arch["architecture"]))
        return pinned
    if not arch["bf16"]:
        if dims["dtype"] == "bfloat16":
            warnings.append("%s: checkpoint is bfloat16 but %s has no bf16: serving in float16"
                            % (where, arch["architecture"]))
        return "float16"
    # float32 checkpoints are served in float16, as both engines' "auto" does.
    return dims["dtype"] if dims["dtype"] in ("bfloat16", "float16") else "float16"


def _no_fp8(arch, gpu, what, where):
    return PlanError("%s: %s needs native FP8 (CC >= 8.9); %s is CC %s (%s): use preset balanced or an FP8 GPU"
                     % (where, what, gpu["name"], gpu["cc"], arch["architecture"]))


def _choose_quantization(arch, ae, dims, preset, pinned, gpu, where, warnings):
    """(--quantization value or None, True when weights get quantized to FP8 online)."""
    label = "%s (CC %s)" % (arch["architecture"], gpu["cc"])
    checkpoint = dims["quant_method"]
    if pinned is not None:
        if pinned not in ae["quantization"]:
            raise PlanError("%s: quantization %r is not usable on %s: choose one of %s"
                            % (where, pinned, label, ", ".join(ae["quantization"])))
        return pinned, pinned == "fp8" and not checkpoint
    if checkpoint:
        if checkpoint not in ae["quantization"]:
            raise PlanError("%s: the checkpoint is quantized with %r, which does not run on %s: use a checkpoint "
                            "quantized with one of %s" % (where, checkpoint, label, ", ".join(ae["quantization"])))
        if preset["weights"] == "fp8":
            if not arch["fp8_native"]:
                raise _no_fp8(arch, gpu, "preset fp8", where)
            if not (dims["quant_float"] and dims["quant_bits"] == 8):
                raise PlanError("%s: preset fp8 needs an unquantized or FP8 checkpoint; this one is %s (%s-bit %s "
                                "weights): use preset balanced"
                                % (where, checkpoint, dims["quant_bits"] or "?", "float" if dims["quant_float"] else "integer"))
        return None, False
    if preset["weights"] == "fp8" and not arch["fp8_native"]:
        raise _no_fp8(arch, gpu, "preset fp8", where)
    if preset["weights"] != "checkpoint" and arch["fp8_native"]:
        return "fp8", True
    if preset["weights"] == "fp8_if_native":
        warnings.append("%s: no native FP8 on %s: weights stay %s; for 4-bit weights use an AWQ/GPTQ checkpoint"
                        % (where, label, dims["dtype"]))
    return None, False


def _choose_kv_cache(arch, ae, ev, preset, pinned, gpu, dims, where):
    if pinned is not None:
        usable = [k for k in ae["kv_cache_dtypes"] if not dims["mla"] or k in ev["mla_kv_cache_dtypes"]]
        if pinned not in usable:
            raise PlanError("%s: KV cache dtype %r is not usable on CC %s (%s)%s: choose one of %s"
                            % (where, pinned, gpu["cc"], arch["architecture"],
                               " for an MLA model" if dims["mla"] else "", ", ".join(usable)))
        return pinned
    if preset["kv_cache"] == "fp8" and not arch["fp8_kv_cache"]:
        raise _no_fp8(arch, gpu, "an FP8 KV cache", where)
    return ev["fp8_kv_cache_dtype"] if preset["kv_cache"] != "auto" and arch["fp8_kv_cache"] else "auto"


def _attention_takes(table, backend, kv_dtype):
    if KV_BYTES.get(kv_dtype, 2) >= 2 or kv_dtype == "auto":
        return True
    # fa3 + fp8_e5m2 silently falls back to triton in SGLang.
    return backend in table["fp8_kv_backends"] and not (backend == "fa3" and kv_dtype == "fp8_e5m2")


def _attention_table(ae, dims, where):
    """The backends of this CC for the model's attention: MLA models get the arch's `mla` entry."""
    if not dims["mla"]:
        return ae
    table = ae.get("mla")
    if not table or table.get("default_attention") not in table.get("attention_backends", ()) or not set(
            table.get("fp8_kv_backends", ())) <= set(table["attention_backends"]):
        raise PlanError("%s: the model uses MLA (kv_lora_rank) and knowledge table entry archs.<cc>.<engine>.mla is "
                        "missing or malformed: fix data/knowledge.yml" % where)
    return table


def _choose_attention(engine, arch, ae, kv_dtype, pinned, gpu, dims, where):
    table = _attention_table(ae, dims, where)
    kind = " for MLA models (kv_lora_rank; the other backends cannot read a latent KV cache)" if dims["mla"] else ""
    if pinned is not None:
        backend = pinned.upper() if engine == "vllm" else pinned   # vLLM names are case-insensitive
        if backend not in table["attention_backends"]:
            raise PlanError("%s: attention backend %r is not available to %s on CC %s (%s)%s: choose one of %s"
                            % (where, pinned, ENGINE_NAMES[engine], gpu["cc"], arch["architecture"], kind,
                               ", ".join(table["attention_backends"])))
        if not _attention_takes(table, backend, kv_dtype):
            raise PlanError("%s: attention backend %s cannot use the %s KV cache on CC %s%s: use one of %s or "
                            "KV cache dtype auto" % (where, backend, kv_dtype, gpu["cc"], kind,
                                                     ", ".join(table["fp8_kv_backends"])))
        return backend
    by_arch = table.get("default_by_architecture") or {}
    backend = next((by_arch[a] for a in dims["architectures"] if a in by_arch), table["default_attention"])
    if not _attention_takes(table, backend, kv_dtype):
        backend = next((b for b in table["fp8_kv_backends"] if _attention_takes(table, b, kv_dtype)), None)
        if backend is None:
            raise PlanError("%s: no %s attention backend on CC %s reads a %s KV cache%s: set KV cache dtype auto"
                            % (where, ENGINE_NAMES[engine], gpu["cc"], kv_dtype, kind))
    return backend


def _check_attention_config(ae, value, gpu, arch, where):
    """vLLM --attention-config: FA3 exists only on CC 9.x, FA4 not on 12.x."""
    try:
        config = value if isinstance(value, dict) else json.loads(value)
    except ValueError as exc:
        raise PlanError("override --attention-config must be JSON: %s" % exc) from exc
    version = config.get("flash_attn_version")
    if version is not None and version not in ae["flash_attn_versions"]:
        raise PlanError("%s: FlashAttention %s is not available to vLLM on CC %s (%s): use one of %s"
                        % (where, version, gpu["cc"], arch["architecture"],
                           ", ".join(map(str, ae["flash_attn_versions"])) or "no FlashAttention (TRITON_ATTN)"))


def _graph_phases(ev, pre, ae, ovr, dims):
    """{decode, prefill}: CUDA graphs on or off after the preset and the overrides that switch
    them (cuda_graph_switches, then the per-phase backend flags, in the order of SGLang's
    parse_cuda_graph_config). SGLang turns prefill graphs off itself for VLMs outside its list
    (cuda_graph_hook.py disable_breakable_cudagraph_if_incompatible) unless an override set them."""
    on = pre["cuda_graph"] and ae["cuda_graph"]
    # a phase the version captures no graphs for stays off whatever the overrides say
    captured = ev["cuda_graph_phases"]
    phases, pinned = {phase: on and phase in captured for phase in ("decode", "prefill")}, set()
    for flag, turned in (ev.get("cuda_graph_switches") or {}).items():
        if ovr.get(flag) is not None:
            phases.update({phase: not ovr[flag] and phase in captured for phase in turned})
            pinned.update(turned)
    for flag, phase in (ev.get("cuda_graph_backend_flags") or {}).items():
        if ovr.get(flag) is not None:
            phases[phase] = ovr[flag] != "disabled" and phase in captured
            pinned.add(phase)
    vlm_archs = ev["memory"].get("prefill_graph_vlm_archs")
    if (vlm_archs is not None and dims["vision_config"] and "prefill" not in pinned
            and not set(dims["architectures"]) & set(vlm_archs)):
        phases["prefill"] = False
    return phases


def _tokens(value, flag, where):
    """A token count override: an int or the engines' human-readable form (8k, 8K)."""
    try:
        return parse_context(value)
    except PlanError:
        raise PlanError("%s: %s must be a number of tokens (e.g. 8192 or 8k), not %r" % (where, flag, value)) from None


def _memory_settings(ev, ovr, where):
    """{role: tokens} of the overrides the memory estimate reads (memory.override_flags)."""
    names = ev["memory"].get("override_flags") or {}
    return {role: _tokens(ovr[flag], flag, where) for role, flag in names.items() if ovr.get(flag) is not None}


def _prefill_graph_sizes(memory, max_bs):
    """How many token sizes SGLang captures prefill graphs for (generate_prefill_cuda_graph_batch_sizes)."""
    count = 0
    for start, stop, step in memory["prefill_graph_sizes"]:
        stop = max_bs if stop is None else min(stop, max_bs)
        count += (stop - start) // step + 1 if stop >= start else 0
    return count


def _sglang_reserve(memory, gpu_mib, tp, phases, max_running, dims, settings):
    """(reserve MiB, chunked prefill tokens): SGLang's activation + CUDA-graph headroom
    (arg_groups/memory_hook.py handle_gpu_memory_settings and reserve_for_graph_mb)."""
    tier = next(t for t in memory["tiers"] if t["below_mib"] is None or gpu_mib < t["below_mib"])
    chunked = settings.get("chunked_prefill", tier["chunked_prefill"])
    decode_bs = settings.get("decode_graph_max_bs") or tier["graph_max_bs"][0 if tp < 4 else 1]
    if max_running and "decode_graph_max_bs" not in settings:
        decode_bs = min(decode_bs, max_running)
    tokens = chunked if chunked > 0 else settings.get("max_prefill_tokens", memory["max_prefill_tokens"])
    reserve = (memory["base_reserve_mib"] + memory["per_tp_rank_mib"] * tp
               + memory["activation_mib_per_token"] * max(tokens, memory["min_activation_tokens"]))
    if phases["decode"]:
        reserve += memory["graph_mib_per_bs"] * decode_bs
    if phases["prefill"]:
        if dims["mla"]:
            reserve += memory["mla_prefill_graph_mib"]      # "MLA backend overhead is much higher"
        else:
            max_bs = settings.get("prefill_graph_max_bs")
            if max_bs is None:
                max_bs = min(chunked, settings.get("max_total_tokens") or chunked)
            reserve += memory["prefill_graph_mib_per_size"] * _prefill_graph_sizes(memory, max_bs)
    if gpu_mib > memory["large_gpu"]["above_mib"]:
        reserve = max(reserve, memory["large_gpu"]["min_reserve_mib"])
    return reserve, chunked


def _sglang_fraction(memory, gpu_mib, reserve, vision):
    """SGLang's own default mem-fraction-static, with the vision-tower factor for VLMs."""
    fraction = round((gpu_mib - reserve) / gpu_mib, 3)
    if vision:
        vlm = memory["vlm"]
        ratio = (vision.get("num_hidden_layers", vlm["baseline_layers"]) * vision.get("hidden_size", vlm["baseline_hidden"]) ** 2
                 / (vlm["baseline_layers"] * vlm["baseline_hidden"] ** 2))
        factor = min(vlm["clamp"][1], max(vlm["clamp"][0], 1.0 - vlm["sensitivity"] * (ratio - 1.0)))
        fraction = round(fraction * vlm["base"] * factor, 3)
    return fraction


def _vllm_reserve(memory, gpu, phases, settings):
    """(reserve MiB, batched tokens) inside vLLM's --gpu-memory-utilization: the policy reserve
    at the engine's default max-num-batched-tokens for this GPU, moved by the batched-token
    override and by --enforce-eager."""
    default = next(t["tokens"] for t in memory["default_batched_tokens"] if gpu["memory_mib"] >= t["min_mib"]
                   and not any(n in gpu["name"] for n in t.get("not_names") or ()))
    batched = settings.get("max_batched_tokens", default)
    reserve = memory["activation_reserve_mib"] + memory["activation_mib_per_batched_token"] * (batched - default)
    if not (phases["decode"] or phases["prefill"]):
        reserve -= memory["cuda_graph_reserve_mib"]
    return max(reserve, memory["min_reserve_mib"]), batched


def _sglang_tier_reserve(memory, gpu_mib, tp, speculative, settings):
    """(reserve MiB, chunked prefill tokens) of the older SGLang rule (0.5.1.post2 server_args.py
    __post_init__): a fixed reserve per GPU-memory tier plus a share per parallel rank, more with
    a draft model. The chunked prefill size does not enter it."""
    tier = next(t for t in memory["reserve_tiers"] if t["below_mib"] is None or gpu_mib < t["below_mib"])
    reserve = tier["reserve_mib"] + tier["per_parallel_mib"] * tp
    if speculative:
        reserve += memory["speculative_reserve_mib"]
    chunked = next(t["chunked_prefill"] for t in memory["tiers"] if t["below_mib"] is None or gpu_mib < t["below_mib"])
    return reserve, settings.get("chunked_prefill", chunked)


def _memory(engine, ev, gpu, tp, phases, max_running, dims, settings, speculative=False):
    """(reserve inside the fraction in MiB, SGLang's own fraction or None, prefill tokens)."""
    memory = ev["memory"]
    if memory["fraction"] == "engine_formula":
        if memory["formula"] == "reserve_tiers":
            reserve, chunked = _sglang_tier_reserve(memory, gpu["memory_mib"], tp, speculative, settings)
        else:
            reserve, chunked = _sglang_reserve(memory, gpu["memory_mib"], tp, phases, max_running, dims, settings)
        return memory["activation_reserve_mib"], _sglang_fraction(memory, gpu["memory_mib"], reserve,
                                                                  dims["vision_config"]), chunked
    reserve, batched = _vllm_reserve(memory, gpu, phases, settings)
    return reserve, None, batched


def _choose_fraction(ev, preset, pinned, engine, formula, where):
    if pinned is not None:
        value = _number(pinned, ev["flags"]["memory_fraction"], where, float)
        if not 0 < value <= 1:
            raise PlanError("%s: %s %r must be a fraction of GPU memory in (0, 1], e.g. 0.85"
                            % (where, ev["flags"]["memory_fraction"], pinned))
        return value
    return formula if formula is not None else preset["memory_fraction"][engine]


def _choose_expert_parallel(ev, dims, tp, pinned, flag, where, warnings):
    """Expert parallelism for a MoE model over more than one GPU: SGLang --ep-size tp, vLLM
    --enable-expert-parallel. None when the model has no experts, runs on one GPU, or its experts
    do not split evenly over the ranks."""
    moe, style = dims["moe"], ev["expert_parallel"]["style"]
    if pinned is not None:
        value = _number(pinned, flag, where) if style == "size" else pinned
        if value in (None, False, 1):
            return value
        if not moe:
            raise PlanError("%s: %s is set but the model is not a mixture-of-experts model (no experts in "
                            "config.json): remove the override" % (where, flag))
        if style == "size" and value != tp:
            raise PlanError("%s: %s %d must be 1 or the tensor parallel size %d" % (where, flag, value, tp))
        return value
    if not moe or tp < 2:
        return None
    if moe["num_experts"] % tp:
        warnings.append("%s: %d experts do not split evenly over %d GPUs: no expert parallelism (experts are "
                        "sharded by tensor parallelism instead)" % (where, moe["num_experts"], tp))
        return None
    return tp if style == "size" else True


def _number(value, flag, where, kind=int):
    """An override given as a number or a numeric string (Ansible templating yields strings)."""
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise PlanError("%s: %s must be a number, not %r" % (where, flag, value)) from None


def _positive(value, flag, where, upper=None):
    if value is None:
        return None
    number = _number(value, flag, where)
    if number < 1 or (upper and number > upper):
        raise PlanError("%s: %s must be an integer from 1 to %s, not %r" % (where, flag, upper or "n", value))
    return number


def _speculative(engine, ev, model, where):
    """Flags (SGLang) or the --speculative-config JSON (vLLM) for a draft model; None without one."""
    if not model.get("draft_path"):
        return None
    spec = ev["speculative"]
    algorithm = str(model.get("draft_algorithm") or "EAGLE3").upper()
    if algorithm not in spec["algorithms"]:
        raise PlanError("%s: model.draft_algorithm %r is not known for %s: choose one of %s"
                        % (where, algorithm, ENGINE_NAMES[engine], ", ".join(spec["algorithms"])))
    name, flags = spec["algorithms"][algorithm], spec["flags"]
    if spec["style"] == "json":     # one flag holding the engine's config object (vLLM)
        keys = spec["json_keys"]
        config = dict(spec["values"], **{keys["algorithm"]: name, keys["draft_model"]: model["draft_path"]})
        return {flags["config"]: json.dumps(config, sort_keys=True)}
    opts = {flags["algorithm"]: name, flags["draft_model"]: model["draft_path"]}
    opts.update((flags[key], value) for key, value in spec["values"].items())
    return opts


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------
def _render(flags, opts):
    args = []
    for flag, value in opts.items():
        entry = flags.index[flag]
        kind = flag_dump.flag_kind(entry)
        if value is None or (kind == "switch" and value is False):
            continue
        if kind == "switch":
            args.append(flag)
        elif kind == "paired":
            args.append(flag if value else flag_dump.negative_spellings(entry["flags"])[0])
        elif isinstance(value, list):
            args += [flag] + [str(v) for v in value]
        else:
            args += [flag, json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)]
    return args


def _container(kn, ev, gpu, tp):
    used = gpu["indices"][:tp]
    device = {"driver": "nvidia", "capabilities": [["gpu"]]}
    if tp == gpu["count"]:
        device["count"] = -1
    else:
        device["device_ids"] = [str(i) for i in used]
    return {
        "ipc_mode": kn["container"]["ipc_mode"],
        "shm_size": ev["container"]["shm_size"],
        "ulimits": copy.deepcopy(kn["container"]["ulimits"]),
        "gpus": "all" if tp == gpu["count"] else used,
        "device_requests": [device],
    }


def _model(model, where):
    if not isinstance(model, dict):
        raise PlanError("%s: model must be a dict with repo_id, path, config and weights_bytes" % where)
    if not model.get("path"):
        raise PlanError("%s: model.path (the model directory inside the container) is missing" % where)
    return model


def resolved_version(engine, engine_version=None, gpu_facts=None, knowledge=None, host=None):
    """The engine version a plan for these GPU facts will run, without planning: the pinned one, else
    the newest that runs on the GPU (as build_plan picks it), else, with no usable GPU facts (no
    driver yet), the table's default_versions entry. Never raises for GPU reasons: the plan does."""
    kn = knowledge or _default_knowledge()
    if engine_version or not isinstance(gpu_facts, dict) or gpu_facts.get("state") != "healthy" \
            or not gpu_facts.get("compute_capability"):
        return _engine(kn, engine, engine_version, host)[0]
    _engine(kn, engine, None, host)
    driver = gpu_facts.get("driver_version")
    version = choose_version(kn, engine, str(gpu_facts["compute_capability"]), driver,
                             None if driver else gpu_facts.get("cuda_version"))[0]
    return version or engine_versions(kn, engine)[-1]


def image_ref(engine, engine_version=None, image=None, knowledge=None, host=None, gpu_facts=None):
    """The engine image a plan will run: the override, else the one the knowledge table names for the
    engine version (resolved_version: with GPU facts the one the plan will pick). Needs no model, so
    the image can be fetched before it."""
    if image:
        return image
    kn = knowledge or _default_knowledge()
    version = resolved_version(engine, engine_version, gpu_facts, kn, host)
    ev = kn["engines"][engine][version]
    return "%s:%s" % (ev["image"]["repo"], ev["image"]["tag"])


def _resolve(kn, gpu_facts, engine, engine_version, preset, image, host, warnings):
    """Everything fixed before the model is looked at: GPU, engine version, arch, driver, preset."""
    gpu = _gpu(gpu_facts, host)
    key, arch = _arch(kn, gpu, host, warnings)
    version, ev, reason = _version(kn, engine, engine_version, gpu, host, warnings)
    where = "%s (%s x %s)" % (host, gpu["count"], gpu["name"])
    _check_kernels(kn, engine, version, ev, arch, gpu, where, bool(engine_version))
    image_name = image or "%s:%s" % (ev["image"]["repo"], ev["image"]["tag"])
    if image:
        warnings.append("%s: image overridden with %s; assuming it is built with CUDA %s like %s:%s"
                        % (host, image, ev["cuda"], ev["image"]["repo"], ev["image"]["tag"]))
    _check_driver(kn, engine, version, ev, arch, gpu, image_name, where, warnings)
    if preset not in kn["presets"]:
        raise PlanError("%s: preset %r is unknown: choose one of %s" % (host, preset, ", ".join(kn["presets"])))
    if not gpu["homogeneous"]:
        warnings.append("%s: GPUs differ; planning with the smallest (%d MiB)" % (where, gpu["memory_mib"]))
    flags = _flags("%s/%s" % (kn.get("flag_dump_dir") or flag_dump.default_dump_dir(), ev["flag_dump"]),
                   engine, version)
    # versions of this engine that run here and take an API key without argv (for a refusal's fix)
    key_versions = [v for v in engine_versions(kn, engine) if kn["engines"][engine][v]["api_key"]["via"] != "unsupported"
                    and not version_blockers(kn, engine, v, gpu["cc"], gpu["driver"])]
    return {"engine": engine, "version": version, "reason": reason, "ev": ev, "gpu": gpu, "arch": arch,
            "ae": arch_engine(kn, key, engine, version), "key_versions": key_versions,
            "preset": kn["presets"][preset], "image": image_name, "where": where, "flags": flags}


def _decide(ctx, dims, model, pinned, ovr, warnings):
    """The settings of the plan, each from the table, the preset and a validated override."""
    engine, ev, gpu, arch, ae, pre, where = (ctx[k] for k in ("engine", "ev", "gpu", "arch", "ae", "preset", "where"))
    names = ev["flags"]
    tp = _choose_tp(dims, gpu, pinned("tp"), names["tp"], where)
    if tp < gpu["count"]:
        warnings.append("%s: tensor parallel size %d leaves %d GPU(s) unused (the model's heads allow no more)"
                        % (where, tp, gpu["count"] - tp))
    quantization, fp8_online = _choose_quantization(arch, ae, dims, pre, pinned("quantization"), gpu, where, warnings)
    kv_dtype = _choose_kv_cache(arch, ae, ev, pre, pinned("kv_cache_dtype"), gpu, dims, where)
    if pinned("attention_config") is not None:
        _check_attention_config(ae, pinned("attention_config"), gpu, arch, where)
    phases = _graph_phases(ev, pre, ae, ovr, dims)
    max_running = (_positive(pinned("max_running_requests"), names["max_running_requests"], where)
                   or pre["max_running_requests"])
    settings = _memory_settings(ev, ovr, where)
    speculative = _speculative(engine, ev, model, where)
    reserve_mib, formula, prefill_tokens = _memory(engine, ev, gpu, tp, phases, max_running, dims, settings,
                                                   bool(speculative))
    return {
        "tp": tp,
        "dtype": _choose_dtype(arch, dims, pinned("dtype"), where, warnings),
        "quantization": quantization,
        "fp8_online": fp8_online,
        "kv_dtype": kv_dtype,
        "attention": _choose_attention(engine, arch, ae, kv_dtype, pinned("attention"), gpu, dims, where),
        "cuda_graph": phases["decode"],
        "prefill_cuda_graph": phases["prefill"],
        "graphs_off_by_preset": not (pre["cuda_graph"] and ae["cuda_graph"]),
        "max_running": max_running,
        "fraction": _choose_fraction(ev, pre, pinned("memory_fraction"), engine, formula, where),
        "reserve_mib": reserve_mib,
        "prefill_tokens": prefill_tokens,
        "max_total_tokens": settings.get("max_total_tokens"),
        "expert_parallel": _choose_expert_parallel(ev, dims, tp, pinned("expert_parallel"),
                                                   names.get("expert_parallel"), where, warnings),
        "speculative": speculative,
        "port": _positive(pinned("port"), names["port"], where, 65535) or ev["port"],
    }


def _fit(kn, ctx, model, dims, d, pinned, warnings):
    """Weights as served (online FP8, draft model) against the GPU; picks the context length."""
    where, name = ctx["where"], model.get("repo_id") or model["path"]
    weights = model.get("weights_bytes")
    if not weights:
        weights = estimate_weights(dims)
        if not weights:
            raise PlanError("%s: model.weights_bytes of %s is missing and config.json lacks vocab_size/"
                            "intermediate_size to estimate it: pass weights_bytes" % (where, name))
        warnings.append("%s: weights of %s estimated from config.json (%.1f GiB); pass model.weights_bytes"
                        % (where, name, weights / GIB))
    # a VLM's vision tower (vision_fit.py): its weights when they were estimated from the
    # text config, and its activations where the engine's memory fraction has to hold them.
    vision = d["vision"] = vision_fit.vision_plan(ctx["engine"], model.get("config"), d["dtype"], where)
    if vision and vision["warning"]:
        warnings.append(vision["warning"])
    if vision and not model.get("weights_bytes"):
        weights += vision["weights_bytes"]
    stored, served = DTYPE_BYTES.get(dims["dtype"], 2), DTYPE_BYTES[d["dtype"]]
    if not dims["quant_method"] and stored > served:
        weights = weights * served // stored      # a float32 checkpoint is loaded in 16 bits
    if d["fp8_online"]:
        weights = fp8_weights(weights, dims)
    if d["speculative"]:
        weights += model.get("draft_weights_bytes") or 0
    context = pinned("context_length")
    result, fit_warnings = fit(
        dims, weights_bytes=weights, gpu_memory_bytes=ctx["gpu"]["memory_mib"] * MIB, memory_fraction=d["fraction"],
        reserve_bytes=int(d["reserve_mib"] * MIB) + (vision or {}).get("reserve_bytes", 0),
        token_cap=d["max_total_tokens"],
        tp=d["tp"],
        kv_bytes=DTYPE_BYTES[d["dtype"]] if d["kv_dtype"] == "auto" else KV_BYTES[d["kv_dtype"]],
        min_context=kn["min_context_tokens"], context_cap=ctx["preset"]["context_cap"],
        pinned_context=parse_context(context) if context is not None else None, where="%s: %s" % (where, name),
        hint="preset memory_optimized (online FP8 weights)" if (
            ctx["arch"]["fp8_native"] and not d["fp8_online"] and not dims["quant_method"]) else None)
    warnings += fit_warnings
    return result


def _options(ctx, model, d, context, pinned, ovr, api_key):
    """{flag: value} in launch order, and where the API key goes."""
    ev, flags = ctx["ev"], ctx["flags"]
    names = ev["flags"]
    served = pinned("served_name") or model.get("served_name") or model.get("repo_id") or model["path"]
    if flags.index[names["served_name"]]["nargs"] == "+" and not isinstance(served, list):
        served = [served]
    opts = {names["model"]: model["path"]} if names.get("model") else {}
    opts.update({
        names["served_name"]: served,
        names["host"]: pinned("host") or "0.0.0.0",
        names["port"]: d["port"],
        names["tp"]: d["tp"],
        names["dtype"]: d["dtype"],
        names["quantization"]: d["quantization"],
        names["kv_cache_dtype"]: d["kv_dtype"],
        names["attention"]: d["attention"],
        names["memory_fraction"]: d["fraction"],
        names["context_length"]: context,
        names["max_running_requests"]: d["max_running"],
    })
    if names.get("metrics"):
        opts[names["metrics"]] = True
    if names.get("expert_parallel"):
        opts[names["expert_parallel"]] = d["expert_parallel"]
    if d["graphs_off_by_preset"]:
        opts.update(ev["cuda_graph_off"])
    opts.update(d["speculative"] or {})
    secrets = {}
    if api_key:
        delivery = ev["api_key"]
        if delivery["via"] == "unsupported":
            raise PlanError("%s: engine_api_key is set but %s: the collection never puts a secret on a command line. "
                            "Fix: unset engine_api_key (a gateway in front can hold the key), or pin an "
                            "engine_version that reads the key from a file (%s)"
                            % (ctx["where"], delivery["reason"], ", ".join(ctx["key_versions"]) or "none runs here"))
        if delivery["via"] == "env":
            secrets["api_key"] = {"env": delivery["name"]}
        else:
            secrets["api_key"] = {"file": delivery["path"], "key": delivery["key"]}
            opts[names["config_file"]] = delivery["path"]
    semantic = {names[k] for k in SEMANTIC if names.get(k)}
    for flag in sorted(ovr):
        if flag not in semantic:
            opts[flag] = ovr[flag]
        elif ovr[flag] is None:
            opts.pop(flag, None)    # null: leave the setting to the engine's own default
    return opts, secrets


def build_plan(gpu_facts, engine, model, preset=DEFAULT_PRESET, overrides=None, engine_version=None,
               knowledge=None, host=None, image=None, api_key=False):
    """The launch plan of docs/CONTRACTS.md for one host. See docs/planning.md for every rule."""
    kn = knowledge if knowledge is not None else _default_knowledge()
    host = host or "this host"
    warnings = []
    ctx = _resolve(kn, gpu_facts, engine, engine_version, preset, image, host, warnings)
    ev, flags, where = ctx["ev"], ctx["flags"], ctx["where"]
    try:
        ovr, ovr_warnings = _overrides(overrides, flags, ev)
    except PlanError as exc:      # name the host like every other refusal
        raise PlanError("%s: %s" % (host, exc)) from None
    warnings += ovr_warnings

    def pinned(key):
        return ovr.get(ev["flags"].get(key)) if ev["flags"].get(key) else None

    model = _model(model, where)
    dims = model_dims(model.get("config"), model.get("repo_id") or model["path"])
    d = _decide(ctx, dims, model, pinned, ovr, warnings)
    fit_result = _fit(kn, ctx, model, dims, d, pinned, warnings)
    opts, secrets = _options(ctx, model, d, fit_result["context_length"], pinned, ovr, api_key)
    vision_decisions = None
    if d.get("vision"):  # the image budget and the multimodal options (vision_fit.py)
        extra, vision_decisions = vision_fit.image_budget(
            d["vision"], engine, model.get("config"), fit_result["context_length"], d["fraction"],
            ctx["gpu"]["memory_mib"] * MIB, ovr, where)
        # data/multimodal.yml names one flag set per engine; an older version may lack them, and
        # without them the image budget the fit assumed would not hold.
        missing = sorted(f for f in extra if f not in flags.index)
        if missing:
            raise PlanError("%s: %s has no %s, so the image budget of this vision-language model cannot be set: "
                            "pin a newer engine_version of %s that runs on this GPU, or use engine=vllm"
                            % (where, flags.label, " or ".join(missing), ENGINE_NAMES.get(engine, engine)))
        opts.update(extra)

    args = ([model["path"]] if ev["model_arg"] == "positional" else []) + _render(flags, opts)
    try:
        flag_dump.check_argv(flags.parser, args)
    except flag_dump.ArgvError as exc:
        raise PlanError("%s: the command line is rejected by the %s flag dump: %s" % (where, flags.label, exc)) from exc

    plan = {
        "engine": engine,
        "engine_version": ctx["version"],
        # why this version: pinned, or the newest that runs here and what newer ones lacked
        "engine_version_reason": ctx["reason"],
        "knowledge_table_version": kn["table_version"],
        "image": ctx["image"],
        "image_cuda": ev["cuda"],
        "entrypoint": list(ev["entrypoint"]),
        "args": args,
        "argv": list(ev["entrypoint"]) + args,
        "env": dict(ev["env"]),
        "secrets": secrets,
        "port": d["port"],
        # the version's readiness/version/load endpoints, for engine_health and engine_inflight
        "http": copy.deepcopy(ev["http"]),
        "container": _container(kn, ev, ctx["gpu"], d["tp"]),
        "decisions": {
            "preset": preset,
            "architecture": ctx["arch"]["architecture"],
            "compute_capability": ctx["gpu"]["cc"],
            "tp_size": d["tp"],
            "dtype": d["dtype"],
            "quantization": d["quantization"] or dims["quant_method"],
            "kv_cache_dtype": d["kv_dtype"],
            "attention_backend": d["attention"],
            "memory_fraction": d["fraction"],
            "context_length": fit_result["context_length"],
            "max_running_requests": d["max_running"],
            "cuda_graph": d["cuda_graph"],
            "prefill_cuda_graph": d["prefill_cuda_graph"],
            "prefill_tokens": d["prefill_tokens"],
            "kv_layout": "mla" if dims["mla"] else "mha",
            "experts": dims["moe"]["num_experts"] if dims["moe"] else None,
            "expert_parallel": d["expert_parallel"],
            "speculative": bool(d["speculative"]),
        },
        "fit": fit_result,
        "warnings": warnings,
    }
    if vision_decisions:  # VLMs only, so text plans keep their hash
        plan["decisions"]["vision"] = vision_decisions
    plan["plan_hash"] = plan_hash(plan)
    return plan
