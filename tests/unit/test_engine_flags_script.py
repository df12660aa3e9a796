"""scripts/engine_flags.py: the knowledge table checked against each version's committed flag dump
(no venv needed), and scripts/cuda_targets.py: the SM targets read from a fat binary."""
from __future__ import annotations

import copy
import json
import os
import struct
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import cuda_targets  # noqa: E402
import engine_flags  # noqa: E402

TABLE = engine_flags.load_table()
VERSIONS = engine_flags.table_versions(TABLE)


def _dump(engine, version):
    with open(engine_flags.dump_path(TABLE, engine, version), encoding="utf-8") as handle:
        return json.load(handle)


def _problems(table, engine, version, entries=None):
    return engine_flags.check_version(table, engine, version, entries)


@pytest.mark.parametrize("engine,version", VERSIONS, ids=["%s-%s" % v for v in VERSIONS])
def test_every_table_version_matches_its_committed_dump(engine, version):
    assert _problems(TABLE, engine, version) == []
    # and the check looked at something: the table's core flags are among what it checked
    entry = TABLE["engines"][engine][version]
    checked = {flag for flag, _unused in engine_flags.table_flags(entry, "x")}
    assert {entry["flags"]["tp"], entry["flags"]["port"], entry["flags"]["memory_fraction"]} <= checked


def test_every_table_version_has_a_dump_file():
    for engine in TABLE["engines"]:
        for version in TABLE["engines"][engine]:
            assert os.path.exists(engine_flags.dump_path(TABLE, engine, version)), (engine, version)


def _tampered(engine, version, change):
    table = copy.deepcopy(TABLE)
    change(table["engines"][engine][version])
    return _problems(table, engine, version)


@pytest.mark.parametrize("engine,version", VERSIONS, ids=["%s-%s" % v for v in VERSIONS])
def test_a_misspelled_flag_in_the_table_fails_naming_flag_and_place(engine, version):
    def change(entry):
        entry["flags"]["tp"] = entry["flags"]["tp"] + "-typo"
    problems = _tampered(engine, version, change)
    tp = TABLE["engines"][engine][version]["flags"]["tp"]
    assert problems == ["engines.%s.%s.flags.tp: %s-typo is not an option of %s"
                        % (engine, version, tp, TABLE["engines"][engine][version]["flag_dump"])]


@pytest.mark.parametrize("section", ["cuda_graph_switches", "deprecated_flags", "owned_flags", "override_flags"])
def test_a_flag_missing_from_the_dump_fails_in_every_section(section):
    engine, version = "vllm", TABLE["default_versions"]["vllm"]

    def change(entry):
        if section == "owned_flags":
            entry["owned_flags"] = list(entry.get("owned_flags") or []) + ["--no-such-flag"]
        elif section == "override_flags":
            entry["memory"]["override_flags"]["bogus"] = "--no-such-flag"
        else:
            entry[section] = dict(entry.get(section) or {}, **{"--no-such-flag": "x"})
    problems = _tampered(engine, version, change)
    assert len(problems) == 1 and "--no-such-flag is not an option" in problems[0], problems
    assert section in problems[0]


def test_a_removed_flag_still_in_the_dump_fails_unless_removed_later():
    engine, version = "vllm", TABLE["default_versions"]["vllm"]
    # --max-model-len is an option: listing it as removed since this version is a table error ...
    problems = _tampered(engine, version, lambda e: e["removed_flags"].update(
        {"--max-model-len": {"since": version, "replacement": "--tensor-parallel-size"}}))
    assert problems == ["engines.vllm.%s.removed_flags.--max-model-len: listed as removed (since %s) but is an "
                        "option of %s" % (version, version, TABLE["engines"][engine][version]["flag_dump"])]
    # ... and so is "never a vLLM flag"; a removal in a LATER release is not (the flag still exists).
    assert _tampered(engine, version, lambda e: e["removed_flags"].update(
        {"--max-model-len": {"since": "never a vLLM flag", "replacement": "x"}}))
    assert _tampered(engine, version, lambda e: e["removed_flags"].update(
        {"--max-model-len": {"since": "99.0.0", "replacement": "--not-yet-there"}})) == []


def test_a_removed_flags_replacement_must_exist():
    engine, version = "vllm", TABLE["default_versions"]["vllm"]
    problems = _tampered(engine, version, lambda e: e["removed_flags"].update(
        {"--gone-flag": {"since": "0.1.0", "replacement": "--also-gone or --max-model-len"}}))
    assert problems == ["engines.vllm.%s.removed_flags.--gone-flag.replacement: --also-gone is not an option of %s"
                        % (version, TABLE["engines"][engine][version]["flag_dump"])]


def test_pinned_values_must_be_choices_and_the_api_key_yaml_key_an_option():
    engine, version = "sglang", TABLE["default_versions"]["sglang"]
    entry = TABLE["engines"][engine][version]
    off = next((f for f, v in entry["cuda_graph_off"].items() if isinstance(v, str)), None)
    if off:
        problems = _tampered(engine, version, lambda e: e["cuda_graph_off"].update({off: "nope"}))
        assert len(problems) == 1 and "'nope' is not a choice of %s" % off in problems[0], problems
    problems = _tampered(engine, version, lambda e: e.update(fp8_kv_cache_dtype="fp8"))
    assert problems and "fp8_kv_cache_dtype: 'fp8' is not a choice of --kv-cache-dtype" in problems[0]
    problems = _tampered(engine, version, lambda e: e["api_key"].update(key="api-keys"))
    assert problems == ["engines.sglang.%s.api_key.key: --api-keys is not an option of %s" % (version, entry["flag_dump"])]


def test_speculative_algorithms_must_be_choices_where_the_flag_has_choices():
    checked = 0
    for engine, version in VERSIONS:
        flag = (TABLE["engines"][engine][version]["speculative"].get("flags") or {}).get("algorithm")
        if not flag or not engine_flags.dump_options(_dump(engine, version))[flag]["choices"]:
            continue    # vLLM: a JSON key; SGLang 0.5.23: a free string checked later by the engine
        problems = _tampered(engine, version, lambda e: e["speculative"]["algorithms"].update(EAGLE="EAGLE9"))
        assert len(problems) == 1 and "speculative.algorithms.EAGLE: 'EAGLE9' is not a choice" in problems[0]
        checked += 1
    if not checked:
        pytest.skip("no table version whose speculative algorithm flag has choices")


def test_another_versions_dump_shows_real_differences():
    """The check is version-specific: the newest SGLang entry against the oldest SGLang dump
    (and the reverse for vLLM) must report problems."""
    for engine in ("sglang", "vllm"):
        versions = sorted(TABLE["engines"][engine], key=engine_flags.version_key)
        if len(versions) < 2:
            pytest.skip("only one %s version in the table" % engine)
        assert _problems(TABLE, engine, versions[-1], _dump(engine, versions[0]))


def test_prose_outside_replacements_and_globs_are_not_flags():
    """A `reason` that names a flag the version lacks, or a glob such as --enable-flashinfer-*,
    is no claim that the flag exists."""
    engine, version = "vllm", TABLE["default_versions"]["vllm"]
    assert _tampered(engine, version, lambda e: e.update(
        note="this release has no --no-such-flag", another={"x": "--max-model-len"})) == []
    problems = _tampered(engine, version, lambda e: e["removed_flags"].update(
        {"--gone-flag": {"since": "0.1.0", "replacement": "one of the --no-such-* flags"}}))
    assert problems == []
    problems = _tampered(engine, version, lambda e: e.update(another={"x": "--no-such-flag"}))
    assert problems == ["engines.vllm.%s.another.x: --no-such-flag is not an option of %s"
                        % (version, TABLE["engines"][engine][version]["flag_dump"])]


def test_removed_in_and_version_order():
    assert engine_flags.removed_in("0.5.20", "0.5.23")
    assert not engine_flags.removed_in("0.5.20", "0.5.1.post2")
    assert engine_flags.removed_in("0.9.2 or earlier", "0.26.0")
    assert engine_flags.removed_in("never an SGLang flag", "0.4.0")
    assert engine_flags.removed_in("prefix only (ambiguous)", "0.4.0")
    assert engine_flags.version_key("0.5.1") < engine_flags.version_key("0.5.1.post2") < engine_flags.version_key("0.5.2")


def test_dumps_keep_one_format():
    """Every committed dump: a list of actions with the keys the planner's flag_dump.py reads
    (vLLM dumps also carry argparse's `deprecated`)."""
    keys = {"flags", "dest", "default", "choices", "action", "nargs", "type", "help"}
    for name in sorted(os.listdir(os.path.join(ROOT, "data", "engine_flags"))):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(ROOT, "data", "engine_flags", name), encoding="utf-8") as handle:
            entries = json.load(handle)
        want = keys | ({"deprecated"} if name.startswith("vllm-") else set())
        assert entries and all(set(e) == want for e in entries), name
        assert all(e["flags"] and all(f.startswith("-") for f in e["flags"]) for e in entries), name


def test_venv_names_follow_the_requirements_files():
    for engine, version in VERSIONS:
        name = engine_flags.venv_name(engine, version)
        assert name in ("", "%s-%s" % (engine, version))


# ------------------------------------------------------------------------------------------------
# cuda_targets.py on a synthetic fat binary: one sm_75 cubin (an ELF with EM_CUDA and the SM in
# e_flags), one compressed sm_80 cubin, one PTX for sm_90.
# ------------------------------------------------------------------------------------------------
def _entry(kind, arch, payload, flags=0):
    header = struct.pack("<HHIQII", kind, 0x0101, 64, len(payload), 0, 0) + struct.pack("<HHI", 0, 0, arch)
    header += struct.pack("<IIQQ", 0, 0, flags, 0)
    header += b"\0" * (64 - len(header))
    return header + payload


def _elf(sm, abi=7):
    ident = b"\x7fELF" + bytes([2, 1, 1, 0x33, abi]) + b"\0" * 7
    body = struct.pack("<HHIQQQI", 2, cuda_targets.EM_CUDA, 1, 0, 0, 0, sm if abi < 8 else sm << 8)
    return (ident + body).ljust(64, b"\0")


def _fatbin(entries):
    body = b"".join(entries)
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_cuda_targets_reads_cubin_and_ptx_sms():
    blob = b"junk" + _fatbin([_entry(2, 75, _elf(75)), _entry(2, 80, b"\0" * 32, flags=0x2000),
                              _entry(1, 90, b".version 8.0\0")]) + b"tail"
    targets, elf = cuda_targets.scan_fatbins(blob)
    summary = cuda_targets._summary(targets, elf)
    assert summary == {"cubin": [75, 80], "ptx": [90], "elf_cubin": [75]}
    assert cuda_targets.runs_on(summary, 75) and cuda_targets.runs_on(summary, 86)
    assert not cuda_targets.runs_on({"cubin": [80, 89, 90], "ptx": [], "elf_cubin": []}, 75)
    assert cuda_targets.runs_on({"cubin": [80], "ptx": [70], "elf_cubin": []}, 75)     # PTX JITs forward
    targets, elf = cuda_targets.scan_fatbins(_fatbin([_entry(2, 100, _elf(100, abi=8))]))
    assert cuda_targets._summary(targets, elf)["elf_cubin"] == [100]
