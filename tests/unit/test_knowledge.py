"""The knowledge table: shape, agreement with the flag dumps, lookups, validation errors."""
import copy
import os
import re

import pytest
import yaml

from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import (
    KnowledgeError, arch_key, default_path, driver_branch, load_knowledge, max_cuda_for_driver,
    min_driver_for_cuda, runs_kernels, validate, version_tuple)

KN = load_knowledge()
REQUIRED_CCS = ["7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]


def dump_index(engine, version):
    entry = KN["engines"][engine][version]
    return flag_dump.index_dump(flag_dump.load_dump(os.path.join(KN["flag_dump_dir"], entry["flag_dump"])))


def every_engine_version():
    return [(e, v) for e in KN["engines"] for v in KN["engines"][e]]


def test_default_path_is_found_from_the_module_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.path.isfile(default_path())
    assert load_knowledge()["table_version"] == KN["table_version"]


def test_table_is_versioned_and_dated():
    assert KN["schema_version"] == 2
    assert re.match(r"^\d{4}\.\d{2}\.\d{2}-\d+$", KN["table_version"])
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", KN["date"])


def test_every_generation_is_listed_and_volta_is_refused():
    for cc in REQUIRED_CCS:
        assert KN["archs"][cc]["supported"] is True
    assert KN["archs"]["7.0"]["supported"] is False
    assert "sm_70" in KN["archs"]["7.0"]["reason"]


def test_bf16_and_fp8_follow_the_hardware():
    assert [cc for cc in REQUIRED_CCS if not KN["archs"][cc]["bf16"]] == ["7.5"]
    assert [cc for cc in REQUIRED_CCS if KN["archs"][cc]["fp8_native"]] == ["8.9", "9.0", "10.0", "12.0"]
    for cc in REQUIRED_CCS:
        arch = KN["archs"][cc]
        assert arch["fp8_kv_cache"] == arch["fp8_native"]
        if not arch["fp8_native"]:
            for engine in KN["engines"]:
                assert "fp8" not in arch[engine]["quantization"]
                assert not any(d.startswith("fp8") for d in arch[engine]["kv_cache_dtypes"])


def test_attention_facts_from_the_reference():
    archs = KN["archs"]
    assert archs["9.0"]["sglang"]["default_attention"] == "fa3"
    assert "fa3" in archs["8.9"]["sglang"]["attention_backends"]        # valid in SGLang on Ada
    assert archs["8.9"]["vllm"]["flash_attn_versions"] == [2]           # impossible in vLLM on Ada
    assert 3 in archs["9.0"]["vllm"]["flash_attn_versions"]
    for cc in ("10.0", "12.0"):
        assert "fa3" not in archs[cc]["sglang"]["attention_backends"]
    assert archs["7.5"]["vllm"]["default_attention"] == "TRITON_ATTN"
    assert "FLASHINFER" not in archs["7.5"]["vllm"]["attention_backends"]


def test_blackwell_rules():
    for cc in ("10.0", "12.0"):
        arch = KN["archs"][cc]
        assert arch["architecture"] == "blackwell"
        assert version_tuple(arch["cuda_min"]) >= (12, 8)
        assert arch["driver"]["open_kernel_module"] == "required"
        assert int(arch["driver"]["min_branch"]) >= 570
    assert KN["archs"]["9.0"]["driver"]["open_kernel_module"] == "allowed"


def test_drivers_and_branches():
    assert min_driver_for_cuda(KN, "13.0") == "580.65.06"
    assert min_driver_for_cuda(KN, "12.8") == "570.26"
    assert max_cuda_for_driver(KN, "580.159.04") == "13.0"
    assert max_cuda_for_driver(KN, "570.172.08") == "12.8"
    assert max_cuda_for_driver(KN, "550.54.15") is None
    assert set(KN["driver_branches"]) >= {"535", "570", "580"}
    assert all(re.match(r"^\d{4}-\d{2}$", b["eol"]) for b in KN["driver_branches"].values())
    assert driver_branch("580.159.04") == "580"
    for engine, version in every_engine_version():
        assert KN["engines"][engine][version]["cuda"] in KN["cuda_driver_minimums"]


def test_sglang_kernels_skip_turing_and_vllm_kernels_do_not():
    sglang = KN["engines"]["sglang"]["0.5.23"]["kernel_cubins"]
    vllm = KN["engines"]["vllm"]["0.33.0"]["kernel_cubins"]
    assert not runs_kernels(sglang, "7.5")
    assert all(runs_kernels(sglang, cc) for cc in REQUIRED_CCS[1:])   # sm_80 code runs on 8.6
    assert all(runs_kernels(vllm, cc) for cc in REQUIRED_CCS)
    assert not runs_kernels(vllm, "7.0")


@pytest.mark.parametrize("cc,expected", [("9.0", "9.0"), ("12.1", "12.0"), ("10.3", "10.0"), ("8.7", "8.6"),
                                         ("6.1", None)])
def test_arch_lookup_falls_back_within_a_major(cc, expected):
    assert arch_key(KN, cc) == expected


@pytest.mark.parametrize("engine,version", every_engine_version())
def test_every_flag_the_table_names_exists_in_the_dump(engine, version):
    entry, index = KN["engines"][engine][version], dump_index(engine, version)
    named = [f for f in entry["flags"].values() if f] + list(entry["cuda_graph_off"]) + list(entry["deprecated_flags"])
    for flag in named:
        assert flag in index, flag


@pytest.mark.parametrize("engine,version", every_engine_version())
def test_removed_flags_are_gone_and_their_replacements_exist(engine, version):
    entry, index = KN["engines"][engine][version], dump_index(engine, version)
    for flag, info in entry["removed_flags"].items():
        assert flag not in index, flag
        for replacement in re.findall(r"--[a-z0-9][a-z0-9-]*", info["replacement"]):
            assert replacement in index, (flag, replacement)


def test_the_brief_removed_flags_are_known():
    sglang = KN["engines"]["sglang"]["0.5.23"]["removed_flags"]
    vllm = KN["engines"]["vllm"]["0.33.0"]["removed_flags"]
    for flag in ("--enable-flashinfer", "--disable-flashinfer", "--enforce-eager", "--torchao-config",
                 "--cuda-graph-max-bs", "--gpu-memory-utilization"):
        assert flag in sglang
    assert sglang["--torchao-config"]["since"] == "0.5.18"
    assert "--swap-space" in vllm


def test_sglang_names_are_valid_choices_of_its_dump():
    index = dump_index("sglang", "0.5.23")
    for cc in REQUIRED_CCS:
        entry = KN["archs"][cc]["sglang"]
        assert set(entry["attention_backends"]) <= set(index["--attention-backend"]["choices"]), cc
        assert set(entry["quantization"]) <= set(index["--quantization"]["choices"]), cc
        assert set(entry["kv_cache_dtypes"]) <= set(index["--kv-cache-dtype"]["choices"]), cc
    assert KN["engines"]["sglang"]["0.5.23"]["fp8_kv_cache_dtype"] in index["--kv-cache-dtype"]["choices"]


def test_presets_are_data_and_say_what_replaced_torchao():
    presets = KN["presets"]
    assert set(presets) == {"balanced", "high_performance", "memory_optimized", "ultra_low_memory", "fp8"}
    assert presets["fp8"]["weights"] == "fp8" and presets["fp8"]["kv_cache"] == "fp8"
    assert presets["high_performance"]["weights"] == "checkpoint"
    for name in ("balanced", "memory_optimized", "ultra_low_memory", "fp8"):
        assert "torchao" in presets[name]["replaces"]


def broken(mutate):
    table = copy.deepcopy(KN)
    mutate(table)
    return table


@pytest.mark.parametrize("mutate,names", [
    (lambda t: t.update(schema_version=1), "schema_version"),
    (lambda t: t["archs"]["8.9"].pop("bf16"), "archs.8.9"),
    (lambda t: t["archs"]["9.0"]["vllm"].update(default_attention="fa3"), "archs.9.0.vllm"),
    (lambda t: t["archs"]["12.0"]["driver"].update(open_kernel_module="maybe"), "open_kernel_module"),
    (lambda t: t["engines"]["sglang"]["0.5.23"].update(cuda="11.8"), "engines.sglang.0.5.23"),
    (lambda t: t["presets"]["balanced"].update(weights="int4wo-128"), "presets.balanced"),
    (lambda t: t["presets"]["fp8"].update(memory_fraction={"vllm": 1.5}), "presets.fp8"),
    (lambda t: t["default_versions"].update(vllm="0.1.0"), "default_versions.vllm"),
    (lambda t: t["engines"]["vllm"]["0.33.0"]["removed_flags"].update({"--x": {"since": "1"}}), "removed_flags.--x"),
])
def test_validation_names_the_broken_key(mutate, names):
    with pytest.raises(KnowledgeError, match=re.escape(names)):
        validate(broken(mutate))


def test_unreadable_table_is_a_knowledge_error(tmp_path):
    with pytest.raises(KnowledgeError, match="cannot read"):
        load_knowledge(str(tmp_path / "missing.yml"))
    path = tmp_path / "knowledge.yml"
    path.write_text(yaml.safe_dump({"schema_version": 2}))
    with pytest.raises(KnowledgeError, match="table_version"):
        load_knowledge(str(path))
