#!/usr/bin/env python3
"""Flag dumps per engine version, and the knowledge table checked against them.

  scripts/engine_flags.py dump ENGINE VERSION     build the version's parser venv from PyPI wheels
                                                  (tests/parsers/setup_venv.sh), dump its real
                                                  parser to data/engine_flags/ENGINE-VERSION.json,
                                                  then check the table's entry against the dump
  scripts/engine_flags.py check [ENGINE VERSION]  check the table against the committed dumps
                                                  (every version in data/knowledge.yml by default)

The check (check_entry) is pure and needs no venv: every flag the table's entry for a version
names (flags:, owned_flags, cuda_graph_*, memory.override_flags, speculative, api_key, deprecated
flags and their replacements, any other key or value spelled --flag) must be an option of that
version's dump; every removed_flags entry must NOT be one, unless its `since` is a release later
than the version (then the flag still exists there and its replacement need not). Values the entry
pins for a flag with choices (cuda_graph_off, fp8_kv_cache_dtype, mla_kv_cache_dtypes, SGLang's
speculative algorithms) must be choices. Recipe: docs/planning.md, "Adding an engine version".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSERS = os.path.join(ROOT, "tests", "parsers")
# One option name inside prose such as "--cuda-graph-backend-decode disabled" or "--a/--b".
# A glob such as "--enable-flashinfer-*" is no flag.
_FLAG_TOKEN = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*[a-z0-9](?![\w*-])")
_WHOLE_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*[a-z0-9]$")
_VERSION = re.compile(r"^\s*(\d+(?:\.\d+)*(?:\.post\d+)?)")


def version_key(text):
    """'0.5.1.post2' -> (0, 5, 1, 2); '0.5.1' -> (0, 5, 1, -1): a post release sorts after."""
    match = re.fullmatch(r"(\d+(?:\.\d+)*)(?:\.post(\d+))?", str(text).strip())
    if not match:
        raise ValueError("not a release version: %r" % (text,))
    return tuple(int(p) for p in match.group(1).split(".")) + (int(match.group(2)) if match.group(2) else -1,)


def removed_in(since, version):
    """Whether a removed_flags entry applies to `version`. `since` is a release ("0.5.20"), a
    release with words after it ("0.9.2 or earlier"), or no release at all ("never an SGLang
    flag", "prefix only"): those apply to every version."""
    match = _VERSION.match(str(since))
    if not match:
        return True
    return version_key(match.group(1)) <= version_key(version)


def dump_options(entries):
    """{option string: dump entry} for one dump."""
    return {flag: entry for entry in entries for flag in entry["flags"]}


def _walk(node, path):
    """(path, key-or-None, string) for every mapping key and string value under node."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, None
            yield from _walk(value, "%s.%s" % (path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, "%s[%d]" % (path, index))
    elif isinstance(node, str):
        yield path, None, node


def table_flags(entry, where):
    """[(flag, place in the table)] that must exist in the version: every --flag the entry
    names as a key or as a whole string value, outside removed_flags, and the flags inside the
    deprecated_flags' replacement texts; plus the --config YAML key of api_key. Other prose (a
    `reason` saying a flag is missing) is not read."""
    found = []
    for section, value in entry.items():
        if section in ("removed_flags", "entrypoint", "image", "env"):
            continue
        for path, key, text in _walk(value, "%s.%s" % (where, section)):
            if key is not None:
                if str(key).startswith("--"):
                    found.append((str(key), "%s (key)" % path))
            elif section == "deprecated_flags":
                found += [(flag, path) for flag in _FLAG_TOKEN.findall(text)]
            elif _WHOLE_FLAG.match(text.strip()):
                found.append((text.strip(), path))
    api_key = entry.get("api_key") or {}
    if api_key.get("via") == "config_file" and api_key.get("key"):
        # --config YAML keys are option names without the dashes
        found.append(("--" + str(api_key["key"]), "%s.api_key.key" % where))
    return found


def check_entry(entry, version, entries, where):
    """Problems (strings naming the flag and its place in the table) of one table entry against
    the dump of its version; [] when the entry is consistent with the dump."""
    options = dump_options(entries)
    problems = []
    for flag, place in table_flags(entry, where):
        if flag not in options:
            problems.append("%s: %s is not an option of %s" % (place, flag, entry.get("flag_dump")))
    for flag, info in (entry.get("removed_flags") or {}).items():
        info = info if isinstance(info, dict) else {}
        place = "%s.removed_flags.%s" % (where, flag)
        if not removed_in(info.get("since", ""), version):
            continue        # removed in a later release: still an option here
        if flag in options:
            problems.append("%s: listed as removed (since %s) but is an option of %s"
                            % (place, info.get("since"), entry.get("flag_dump")))
        for other in _FLAG_TOKEN.findall(str(info.get("replacement", ""))):
            if other not in options:
                problems.append("%s.replacement: %s is not an option of %s" % (place, other, entry.get("flag_dump")))
    problems += _check_choices(entry, options, where)
    return problems


def _check_choices(entry, options, where):
    """Values the entry pins for flags that have choices in the dump."""
    problems = []

    def need_choice(flag, value, place):
        choices = (options.get(flag) or {}).get("choices")
        if choices and not isinstance(value, bool) and value not in choices:
            problems.append("%s: %r is not a choice of %s (%s)" % (place, value, flag, ", ".join(map(str, choices))))

    for flag, value in (entry.get("cuda_graph_off") or {}).items():
        need_choice(flag, value, "%s.cuda_graph_off.%s" % (where, flag))
    spec = entry.get("speculative") or {}
    algorithm_flag = (spec.get("flags") or {}).get("algorithm")
    if algorithm_flag:      # style flags: the algorithm's value goes to this flag
        for name, value in (spec.get("algorithms") or {}).items():
            need_choice(algorithm_flag, value, "%s.speculative.algorithms.%s" % (where, name))
    kv_flag = (entry.get("flags") or {}).get("kv_cache_dtype")
    if kv_flag:
        if entry.get("fp8_kv_cache_dtype"):
            need_choice(kv_flag, entry["fp8_kv_cache_dtype"], "%s.fp8_kv_cache_dtype" % where)
        for index, value in enumerate(entry.get("mla_kv_cache_dtypes") or ()):
            need_choice(kv_flag, value, "%s.mla_kv_cache_dtypes[%d]" % (where, index))
    return problems


def load_table(path=None):
    """The knowledge table through the collection's own loader (validation included)."""
    sys.path.insert(0, os.path.join(ROOT, "plugins", "plugin_utils"))
    try:
        import knowledge    # noqa: E402  (plain import: knowledge.py has no package imports)
    finally:
        sys.path.pop(0)
    return knowledge.load_knowledge(path)


def table_versions(table):
    """[(engine, version)] of every engine version in the table, oldest first per engine."""
    return [(engine, version) for engine in sorted(table["engines"])
            for version in sorted(table["engines"][engine], key=version_key)]


def dump_path(table, engine, version):
    entry = table["engines"][engine][version]
    return os.path.join(table.get("flag_dump_dir") or os.path.join(ROOT, "data", "engine_flags"),
                        entry.get("flag_dump") or "%s-%s.json" % (engine, version))


def check_version(table, engine, version, entries=None):
    """check_entry for one version, against its committed dump unless entries are given."""
    if entries is None:
        path = dump_path(table, engine, version)
        if not os.path.exists(path):
            return ["engines.%s.%s.flag_dump: %s does not exist (scripts/engine_flags.py dump %s %s)"
                    % (engine, version, path, engine, version)]
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    return check_entry(table["engines"][engine][version], version, entries, "engines.%s.%s" % (engine, version))


# ------------------------------------------------------------------------------------------------
# Making a dump: the same venvs and the same real parser the real-parser test uses.
# ------------------------------------------------------------------------------------------------
def venv_name(engine, version):
    """'' for the versions requirements.txt pins (the default .venv-parsers), else
    'ENGINE-VERSION' (requirements-ENGINE-VERSION.txt, .venv-parsers-ENGINE-VERSION)."""
    with open(os.path.join(PARSERS, "requirements.txt"), encoding="utf-8") as handle:
        if "%s==%s" % (engine, version) in (line.strip() for line in handle):
            return ""
    return "%s-%s" % (engine, version)


def venv_python(name):
    base = os.environ.get("GPUFLEET_PARSERS_VENV") or os.path.join(ROOT, ".venv-parsers")
    return os.path.join(base + ("-" + name if name else ""), "bin", "python")


def seed_requirements(engine, version):
    """A first requirements-ENGINE-VERSION.txt for a version that has none: requirements.txt
    (the newest versions) with the engine's pin changed and the other engine left out. Adjust by
    trial: setup_venv.sh's self-check prints the import that fails."""
    source = os.path.join(PARSERS, "requirements.txt")
    other = {"sglang": "vllm", "vllm": "sglang"}[engine]
    lines = ["# The parser venv for %s %s (.venv-parsers-%s-%s). Seeded by scripts/engine_flags.py from\n"
             "# requirements.txt; adjusted by trial (docs/planning.md, 'Adding an engine version').\n"
             % (engine, version, engine, version)]
    with open(source, encoding="utf-8") as handle:
        for line in handle:
            pin = line.split("==")[0].strip()
            if line.startswith("#") or pin == other:
                continue
            lines.append("%s==%s\n" % (engine, version) if pin == engine else line)
    path = os.path.join(PARSERS, "requirements-%s-%s.txt" % (engine, version))
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    print("engine_flags: wrote %s from requirements.txt; if the venv fails, pin what it lacks there" % path)


def setup_venv(engine, version):
    """Build (or reuse) the version's parser venv; returns its python."""
    name = venv_name(engine, version)
    if name and not os.path.exists(os.path.join(PARSERS, "requirements-%s.txt" % name)):
        seed_requirements(engine, version)
    subprocess.run(["bash", os.path.join(PARSERS, "setup_venv.sh")] + ([name] if name else []), check=True)
    return venv_python(name)


def make_dump(engine, version):
    """The real parser's actions for engine==version, as a JSON string (the dump file's text)."""
    python = setup_venv(engine, version)
    result = subprocess.run([python, os.path.join(PARSERS, "real_parsers.py"), "--dump", engine],
                            check=True, stdout=subprocess.PIPE, text=True)
    info = subprocess.run([python, os.path.join(PARSERS, "real_parsers.py")], input='{"info": true}\n',
                          check=True, stdout=subprocess.PIPE, text=True)
    installed = json.loads(info.stdout)["versions"].get(engine)
    if installed != version:
        raise SystemExit("the venv holds %s %s, not %s" % (engine, installed, version))
    return result.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dump_cmd = sub.add_parser("dump", help="make data/engine_flags/ENGINE-VERSION.json from the real wheel, then check")
    dump_cmd.add_argument("engine", choices=("sglang", "vllm"))
    dump_cmd.add_argument("version")
    dump_cmd.add_argument("--output", help="write here instead of data/engine_flags/ENGINE-VERSION.json")
    check_cmd = sub.add_parser("check", help="check the knowledge table against the committed dumps")
    check_cmd.add_argument("engine", nargs="?")
    check_cmd.add_argument("version", nargs="?")
    args = parser.parse_args(argv)

    if args.command == "dump":
        text = make_dump(args.engine, args.version)
        output = args.output or os.path.join(ROOT, "data", "engine_flags", "%s-%s.json" % (args.engine, args.version))
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        entries = json.loads(text)
        print("engine_flags: wrote %s (%d options)" % (output, len(entries)))
        table = load_table()
        if args.version not in table["engines"].get(args.engine, {}):
            print("engine_flags: %s %s is not in data/knowledge.yml yet: add engines.%s.\"%s\" "
                  "(flag_dump: %s-%s.json), then run: scripts/engine_flags.py check %s %s"
                  % ((args.engine, args.version) * 4))
            return 0
        pairs, supplied = [(args.engine, args.version)], entries
    else:
        table = load_table()
        pairs = [(args.engine, args.version)] if args.version else \
            [p for p in table_versions(table) if args.engine in (None, p[0])]
        supplied = None

    failed = 0
    for engine, version in pairs:
        problems = check_version(table, engine, version, supplied)
        print("engine_flags: %s %s: %s" % (engine, version, "ok" if not problems else "%d problem(s)" % len(problems)))
        for problem in problems:
            print("  " + problem)
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
