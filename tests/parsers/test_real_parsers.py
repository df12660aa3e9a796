"""Every plan the planner can produce, fed to the REAL parsers of every engine version in the table.

The engines are pip-installed without their GPU dependencies: the newest SGLang and vLLM in
`.venv-parsers` (tests/parsers/setup_venv.sh, requirements.txt), every other version of
data/knowledge.yml in `.venv-parsers-ENGINE-VERSION` (requirements-ENGINE-VERSION.txt);
tests/parsers/real_parsers.py runs there and parses each argv with the engines' own add_cli_args /
make_arg_parser (details in its docstring and README.md). This module runs in the project venv: it
builds the plans per (engine, version), sends every distinct argv to one real_parsers.py process per
version for the whole session (importing an engine takes ~10 s), and checks the verdicts.

scripts/test.sh builds `.venv-parsers` before its two lanes; the per-version venvs are built here,
by the session fixture `venv_builds` (setup_venv.sh ENGINE-VERSION, idempotent, under its own
flock), so that in CI they build inside lane A while lane B runs.

Without a venv the tests of its version skip, unless GPUFLEET_REQUIRE_REAL_PARSERS is set
(scripts/test.sh sets it): then a missing, stale or unbuildable venv is a failure. Per-version venvs
are built only when GPUFLEET_REQUIRE_REAL_PARSERS or GPUFLEET_BUILD_PARSER_VENVS is set.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils.engine_draft import DRAFT_MOUNT
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError, build_plan
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import engine_versions, load_knowledge
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.environ.get("GPUFLEET_PARSERS_VENV") or os.path.join(ROOT, ".venv-parsers")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
CHECKER = os.path.join(HERE, "real_parsers.py")
REQUIRED = bool(os.environ.get("GPUFLEET_REQUIRE_REAL_PARSERS"))
BUILD = REQUIRED or bool(os.environ.get("GPUFLEET_BUILD_PARSER_VENVS"))

for _path in (os.path.join(ROOT, "tests", "unit"), os.path.join(ROOT, "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
import engine_flags  # noqa: E402  (scripts/engine_flags.py: venv names, removed_in)
import gpu_fixtures  # noqa: E402  (tests/unit/gpu_fixtures.py)

KN = load_knowledge()
ENGINES = sorted(KN["engines"])
# Every (engine, version) of the table: each one gets its own real parser and its own plans.
VERSIONS = [(engine, version) for engine in ENGINES for version in engine_versions(KN, engine)]
DEFAULTS = [(engine, KN["default_versions"][engine]) for engine in ENGINES]
VERSION_IDS = ["%s-%s" % pair for pair in VERSIONS]
PRESETS = list(KN["presets"])
GPU_COUNTS = (1, 2, 4, 8)
MODELS = sorted(name for name in os.listdir(gpu_fixtures.MODELS_DIR)
                if os.path.isfile(os.path.join(gpu_fixtures.MODELS_DIR, name, "config.json")))
SMALL_MODEL = "Qwen2.5-0.5B-Instruct" if "Qwen2.5-0.5B-Instruct" in MODELS else MODELS[0]
# Stand-in for the API-key YAML that the SGLang plan reads through --config at run time.
API_KEY_VALUE = "real-parser-test-key"

# Flags whose removal the real parsers of the DEFAULT (newest) versions must report
# (shared/reference/engine_reference.md §1). Older versions still have some of them (--torchao-config
# until SGLang 0.5.18); for every version the table's own removed_flags/deprecated_flags are checked
# in test_knowledge_table_removed_flags_are_not_real_flags.
REJECTED = {
    "sglang": [
        ["--disable-flashinfer"],                   # ambiguous prefix since 0.4.3
        ["--torchao-config", "int4wo-64"],          # removed in 0.5.18
        ["--cuda-graph-max-bs", "8"],               # ambiguous since 0.5.20
        ["--cuda-graph-bs", "8"],                   # ambiguous since 0.5.20
        ["--gpu-memory-utilization", "0.9"],        # never an SGLang flag
        ["--enforce-eager"],                        # never an SGLang flag
        ["--enable-ep-moe"],                        # gone since 0.5.5
        ["--pp", "2"],                              # ambiguous prefix
        ["--dtype", "fp16"],                        # invalid choice
        ["--kv-cache-dtype", "fp8"],                # invalid choice (fp8_e4m3 / fp8_e5m2)
        ["--quantization", "torchao"],              # invalid choice
    ],
    "vllm": [
        ["--swap-space", "4"],                      # gone in 0.20.0
        ["--num-scheduler-steps", "8"],             # gone in 0.10.1
        ["--task", "generate"],                     # gone in 0.14.0
        ["--max-seq-len-to-capture", "8192"],       # gone in 0.11.0
        ["--preemption-mode", "swap"],              # gone in 0.11.0
        ["--device", "cuda"],                       # gone in 0.10.1, now an ambiguous prefix
        ["--enable-torch-compile"],                 # never a vLLM flag
        ["--schedule-policy", "lof"],               # never a vLLM flag
        ["--scheduling-policy", "lof"],             # invalid choice
        ["--attention-backend", "fa3"],             # not a vLLM attention backend (engine value check)
        ["--kv-cache-dtype", "fp8_e4m3fn"],         # not a vLLM KV cache dtype (engine value check)
    ],
}
# Removed or foreign flags that the real parser still ACCEPTS through argparse prefix matching,
# silently meaning something else: (argv fragment, the option argparse expands it to). The planner
# must never emit them (checked below), and the check must flag them (abbreviations).
# engine_reference.md calls --enable-flashinfer / --disable-flashinfer errors in vLLM 0.33.0; its
# real parser takes them as --enable-flashinfer-autotune / --disable-flashinfer-autotune.
PREFIX_TRAPS = {
    "sglang": [(["--enable-flashinfer"], "--enable-flashinfer-allreduce-fusion"), (["--tp", "1"], "--tp-size")],
    "vllm": [(["--enable-flashinfer"], "--enable-flashinfer-autotune"),
             (["--disable-flashinfer"], "--disable-flashinfer-autotune")],
}
TRAP_FLAGS = {engine: {extra[0] for extra, _unused in traps} for engine, traps in PREFIX_TRAPS.items()}


# ------------------------------------------------------------------------------------------------
# The plans
# ------------------------------------------------------------------------------------------------
def _cards():
    """The GPU fixtures, plus a synthetic card for every knowledge-table arch they leave out."""
    cards = {name: (name, {}) for name in gpu_fixtures.CARDS}
    covered = {spec["compute_capability"] for spec in gpu_fixtures.CARDS.values()}
    for cc, arch in sorted(KN["archs"].items()):
        if cc not in covered:
            cards["synthetic-cc%s" % cc] = ("h100", {"compute_capability": cc,
                                                     "architecture": arch.get("architecture")})
    return cards


CARDS = _cards()


def _facts(card, count):
    base, changes = CARDS[card]
    facts = gpu_fixtures.gpu_facts(base, count)
    if changes:
        facts.update(changes)
        for gpu in facts["gpus"]:
            gpu["compute_capability"] = changes["compute_capability"]
            gpu["name"] = "Synthetic CC %s GPU" % changes["compute_capability"]
    return facts


def _model(name, **changes):
    """A fixture model with weights_bytes counted from its config, as tests/unit does."""
    m = gpu_fixtures.model(name, **changes)
    m.setdefault("weights_bytes", estimate_weights(model_dims(m["config"])))
    return m


def _variants(engine, version):
    """(label, build_plan keyword arguments, model changes) beyond the plain preset plan."""
    ev = KN["engines"][engine][version]
    yield "api_key", {"api_key": True}, {}
    for algorithm in sorted(ev["speculative"]["algorithms"]):
        # The path the engine role mounts the draft snapshot at (module_utils/engine_draft.py).
        yield "draft-%s" % algorithm, {}, {"draft_path": DRAFT_MOUNT, "draft_algorithm": algorithm,
                                           "draft_weights_bytes": 1 << 28}


def _pins(engine, version, card):
    """Overrides that pin each value the knowledge table allows for this engine on this card."""
    cc = _facts(card, 1)["compute_capability"]
    ae = KN["archs"].get(cc, {}).get(engine) or {}
    names = KN["engines"][engine][version]["flags"]
    for key, flag in (("attention_backends", names["attention"]), ("kv_cache_dtypes", names["kv_cache_dtype"]),
                      ("quantization", names["quantization"])):
        for value in ae.get(key) or ():
            yield "pin %s=%s" % (flag, value), {"overrides": {flag: value}}


MLA_MODEL = "DeepSeek-V2-Lite-Chat" if "DeepSeek-V2-Lite-Chat" in MODELS else None


def _mla_pins(engine, version, card):
    cc = _facts(card, 1)["compute_capability"]
    mla = (KN["archs"].get(cc, {}).get(engine) or {}).get("mla") or {}
    flag = KN["engines"][engine][version]["flags"]["attention"]
    for value in mla.get("attention_backends") or ():
        yield "pin mla %s=%s" % (flag, value), {"overrides": {flag: value}}


def _cases(engine, version):
    """Every (context, build_plan args) the matrix covers for one engine version (pinned as the
    inventory's engine_version would pin it)."""
    for card, count, name, preset in itertools.product(CARDS, GPU_COUNTS, MODELS, PRESETS):
        yield (card, count, engine, name, preset, "plain"), (card, count, name, preset, {}, {})
    # API key delivery and speculative decoding on every card, one GPU, every model and preset.
    for card, name, preset in itertools.product(CARDS, MODELS, PRESETS):
        for label, kwargs, changes in _variants(engine, version):
            yield (card, 1, engine, name, preset, label), (card, 1, name, preset, kwargs, changes)
    # Every attention backend / KV cache dtype / quantization the table lists, pinned.
    for card, preset in itertools.product(CARDS, ("high_performance", "balanced")):
        for label, kwargs in _pins(engine, version, card):
            yield (card, 1, engine, SMALL_MODEL, preset, label), (card, 1, SMALL_MODEL, preset, kwargs, {})
        # The MLA backends of the table (archs.<cc>.<engine>.mla), pinned for an MLA model on 2 GPUs.
        if MLA_MODEL:
            for label, kwargs in _mla_pins(engine, version, card):
                yield (card, 2, engine, MLA_MODEL, preset, label), (card, 2, MLA_MODEL, preset, kwargs, {})


def _build_all():
    """{(engine, version): [(context, plan)]}, the refused combinations per (engine, version), and
    the planner's crashes. Combinations the planner refuses (PlanError: e.g. an old version on a
    GPU its kernels lack) are counted, not checked. A crash (any other exception) fails that
    version's plan test with its context, without hiding the other versions' checks."""
    plans, refused = collections.defaultdict(list), collections.Counter()
    crashes = collections.defaultdict(list)
    for engine, version in VERSIONS:
        for context, (card, count, name, preset, kwargs, changes) in _cases(engine, version):
            try:
                plan = build_plan(_facts(card, count), engine, _model(name, **changes), preset, knowledge=KN,
                                  host="parser-test", engine_version=version, **kwargs)
            except PlanError:
                refused[engine, version] += 1
                continue
            except Exception as exc:    # noqa: BLE001  (a planner bug: reported per version below)
                crashes[engine, version].append("%s: %s: %s" % (context, type(exc).__name__, exc))
                continue
            plans[engine, version].append((context, plan))
    return plans, refused, crashes


# ------------------------------------------------------------------------------------------------
# The parser venvs: one per engine version (the newest two share .venv-parsers)
# ------------------------------------------------------------------------------------------------
def _venv(engine, version):
    """(setup_venv.sh argument or "", venv path, requirements file) of one engine version."""
    name = engine_flags.venv_name(engine, version)
    return (name, VENV + ("-" + name if name else ""),
            os.path.join(HERE, "requirements-%s.txt" % name if name else "requirements.txt"))


def _stamp_state(engine, version):
    """None when the version's venv is usable, else why not."""
    name, venv, requirements = _venv(engine, version)
    fix = "run `bash tests/parsers/setup_venv.sh%s`" % (" " + name if name else "")
    if not os.path.exists(requirements):
        return "no %s for %s %s (docs/planning.md, 'Adding an engine version')" % (requirements, engine, version)
    if not os.access(os.path.join(venv, "bin", "python"), os.X_OK):
        return "%s is missing: %s" % (venv, fix)
    try:
        with open(os.path.join(venv, ".gpufleet-stamp"), encoding="utf-8") as handle:
            stamp = handle.read().strip()
    except OSError:
        return "%s has no stamp (half-built): %s" % (venv, fix)
    digest = hashlib.sha256()
    for path in (requirements, os.path.join(HERE, "setup_venv.sh")):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    if stamp.split("-py")[0] != digest.hexdigest():
        return "%s is stale (%s or setup_venv.sh changed): %s" % (venv, os.path.basename(requirements), fix)
    return None


def _start_builds():
    """Start setup_venv.sh for every per-version venv that is not ready (all at once: pip is
    mostly download and unzip). {(engine, version): (Popen, log path, start time)}.

    .venv-parsers itself comes first, and is waited for: the per-version venvs hard-link torch from it.
    setup_venv.sh holds a lock per venv, so a build already under way (scripts/test.sh starts them all
    while the lab comes up) is waited for rather than started twice."""
    builds = {}
    if not BUILD:
        return builds
    logs = os.path.join(ROOT, ".cache")
    os.makedirs(logs, exist_ok=True)

    def start(name):
        log = os.path.join(logs, "setup-venv-parsers%s.log" % ("-" + name if name else ""))
        with open(log, "w", encoding="utf-8") as handle:
            proc = subprocess.Popen(["bash", os.path.join(HERE, "setup_venv.sh")] + ([name] if name else []),
                                    cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        return proc, log, time.monotonic()

    pending = [(engine, version) for engine, version in VERSIONS if _stamp_state(engine, version) is not None]
    base = [key for key in pending if not _venv(*key)[0]]
    if base:
        build = start("")
        build[0].wait(timeout=1200)
        builds.update((key, build) for key in base)
    for key in pending:
        if key not in base:
            builds[key] = start(_venv(*key)[0])
    return builds


def _finish_build(key, build):
    """Wait for one build; a note with the time it took (or its failure)."""
    proc, log, started = build
    code = proc.wait(timeout=1200)
    with open(log, encoding="utf-8") as handle:
        tail = handle.read()[-3000:]
    return ("built in %.1fs" % (time.monotonic() - started) if code == 0
            else "setup_venv.sh %s-%s exited %s:\n%s" % (key[0], key[1], code, tail))


# ------------------------------------------------------------------------------------------------
# The real parsers, once per session
# ------------------------------------------------------------------------------------------------
def _api_key_file(tmp_path_factory):
    sglang = KN["engines"]["sglang"][KN["default_versions"]["sglang"]]["api_key"]
    path = tmp_path_factory.mktemp("secrets") / "api-key.yaml"
    path.write_text("%s: %s\n" % (sglang.get("key", "api-key"), API_KEY_VALUE), encoding="utf-8")
    return str(path)


def _runnable(args, config_file):
    """The argv as run; a --config file (the SGLang API-key YAML, mounted at run time) is a stand-in."""
    args = list(args)
    if "--config" in args:
        args[args.index("--config") + 1] = config_file
    return args


def _run_checker(python, requests):
    """One real_parsers.py process over `requests` (JSON strings); its answers in order."""
    started = time.monotonic()
    proc = subprocess.run([python, CHECKER], input="\n".join(requests) + "\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(requests):
        return None, "FAILED: real_parsers.py exited %s with %d of %d answers; stderr tail:\n%s" % (
            proc.returncode, len(lines), len(requests), proc.stderr[-4000:])
    return [json.loads(line) for line in lines], "%d requests in %.1fs" % (len(requests), time.monotonic() - started)


class RealParsers:
    """Verdicts of real_parsers.py per (engine, version): one process per version, side by side
    (each imports only its own engine; SGLang 0.5.23's prepare_server_args rebuilds its 532-option
    parser on every call, ~25 ms, so its share dominates). A version whose venv is missing or
    failed has a problem instead of answers; its tests fail (REQUIRED) or skip."""

    def __init__(self, requests, builds):
        todo = {key: [json.dumps(r, sort_keys=True) for r in reqs] for key, reqs in requests.items()}
        self.builds = {}

        def run(key):
            # A version whose venv is still building waits for it; the others start at once.
            if key in builds:
                self.builds["%s-%s" % key] = _finish_build(key, builds[key])
            problem = _stamp_state(*key)
            if problem:
                return None, problem + (" (%s)" % self.builds["%s-%s" % key] if key in builds else "")
            return _run_checker(os.path.join(_venv(*key)[1], "bin", "python"), todo[key])

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            results = dict(zip(todo, pool.map(run, todo)))
        self.answers, self.timings, self.problems = {}, {}, {}
        for key, (answers, note) in results.items():
            self.timings["%s-%s" % key] = note
            if answers is None:
                self.problems[key] = note
                continue
            self.answers[key] = dict(zip(todo[key], answers))

    def need(self, engine, version):
        problem = self.problems.get((engine, version))
        if problem:
            if REQUIRED:
                pytest.fail("GPUFLEET_REQUIRE_REAL_PARSERS is set but %s %s: %s" % (engine, version, problem),
                            pytrace=False)
            pytest.skip("%s %s: %s (set GPUFLEET_REQUIRE_REAL_PARSERS=1 to make this a failure)"
                        % (engine, version, problem))
        return self

    def get(self, engine, version, request):
        return self.need(engine, version).answers[engine, version][json.dumps(request, sort_keys=True)]

    def check(self, engine, version, args):
        return self.get(engine, version, {"engine": engine, "args": list(args)})


def _base_plans(plans):
    """One ordinary, accepted plan per default engine version to inject flags into."""
    base = {}
    for engine, version in DEFAULTS:
        for context, plan in plans[engine, version]:
            card, count, _engine, name, preset, variant = context
            if variant == "plain" and count == 1 and preset == "balanced" and card == "h100":
                base[engine] = plan
                break
    return base


def _table_flags(engine, version):
    ev = KN["engines"][engine][version]
    return sorted(set(ev["removed_flags"]) | set(ev["deprecated_flags"]) | TRAP_FLAGS[engine])


@pytest.fixture(scope="session")
def venv_builds():
    """The per-version venv builds, started before the plans are built (they overlap)."""
    return _start_builds()


@pytest.fixture(scope="session")
def matrix():
    return _build_all()


@pytest.fixture(scope="session")
def real(venv_builds, matrix, tmp_path_factory, capsys_session_print):
    plans = matrix[0]
    config_file = _api_key_file(tmp_path_factory)
    requests = collections.defaultdict(list)
    for key in VERSIONS:
        requests[key].append({"info": True})
        seen = set()
        for _context, plan in plans[key]:
            request = {"engine": plan["engine"], "args": _runnable(plan["args"], config_file)}
            encoded = json.dumps(request, sort_keys=True)
            if encoded not in seen:
                seen.add(encoded)
                requests[key].append(request)
        requests[key].append({"engine": key[0], "resolve": _table_flags(*key)})
    for engine, plan in _base_plans(plans).items():
        key = (engine, KN["default_versions"][engine])
        for extra in REJECTED[engine] + [extra for extra, _unused in PREFIX_TRAPS[engine]]:
            requests[key].append({"engine": engine, "args": list(plan["args"]) + extra})
    parsers = RealParsers(requests, venv_builds)
    parsers.config_file = config_file
    capsys_session_print("real-parser venvs: %s; real_parsers.py: %s" % (
        parsers.builds or "none built here", parsers.timings))
    return parsers


@pytest.fixture(scope="session")
def capsys_session_print(pytestconfig):
    """Print to the terminal even when the test passes (CI log), like capsys.disabled()."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def emit(line):
        with capture.global_and_fixture_disabled():
            print("\n" + line)
    return emit


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
def test_every_table_version_has_a_parser_venv_definition():
    """A version added to the table without requirements for its parser venv is caught even
    where the venvs are not built."""
    missing = [_venv(*key)[2] for key in VERSIONS if not os.path.exists(_venv(*key)[2])]
    assert not missing, "no requirements file for: %s (docs/planning.md, 'Adding an engine version')" % missing


@pytest.mark.parametrize("engine,version", VERSIONS, ids=VERSION_IDS)
def test_parser_venv_has_the_planned_engine_version(real, engine, version):
    info = real.get(engine, version, {"info": True})
    assert info["stubs"] == [], "real_parsers.py stubs %s; update README.md" % info["stubs"]
    assert info["versions"][engine] == version, (
        "the knowledge table plans %s %s but its parser venv %s has %s" % (
            engine, version, _venv(engine, version)[1], info["versions"][engine]))


@pytest.mark.parametrize("engine,version", VERSIONS, ids=VERSION_IDS)
def test_every_generated_plan_parses_with_the_real_parsers(real, matrix, engine, version, capsys_session_print):
    plans, refused, crashes = matrix
    crashes = crashes[engine, version]
    plans = plans[engine, version]
    assert plans, "the planner produced no plan at all for %s %s (%d refused)" % (
        engine, version, refused[engine, version])
    failures, abbreviated = [], []
    distinct = set()
    for context, plan in plans:
        assert plan["engine"] == engine and plan["engine_version"] == version, context
        assert plan["argv"] == plan["entrypoint"] + plan["args"], context
        args = _runnable(plan["args"], real.config_file)
        distinct.add(tuple(args))
        verdict = real.check(engine, version, args)
        if not verdict["ok"]:
            failures.append("%s\n    %s\n    -> [%s] %s"
                            % (context, " ".join(plan["argv"]), verdict["stage"], verdict["error"]))
        elif verdict["abbreviations"]:
            abbreviated.append("%s: %s" % (context, verdict["abbreviations"]))
    cards = sorted({context[0] for context, _unused in plans})
    summary = ("%s %s: %d plans on %d cards, %d distinct argvs, %d combinations refused by the planner, "
               "%d rejected by the real parser, %d planner crashes"
               % (engine, version, len(plans), len(cards), len(distinct), refused[engine, version],
                  len(failures), len(crashes)))
    capsys_session_print("real-parser check: %s" % summary)
    assert not crashes, "the planner crashed on %d combination(s); %s\n%s" % (
        len(crashes), summary, "\n".join(crashes[:10]))
    assert not failures, "%d plan(s) rejected by the real parser; %s\n%s" % (
        len(failures), summary, "\n".join(failures[:20]))
    assert not abbreviated, "plans relying on argparse prefix matching:\n" + "\n".join(abbreviated[:20])


def test_planner_never_emits_removed_or_trap_flags(matrix):
    plans = matrix[0]
    for (engine, version), version_plans in plans.items():
        ev = KN["engines"][engine][version]
        banned = {flag for flag, info in ev["removed_flags"].items()
                  if engine_flags.removed_in(info.get("since", ""), version)} | TRAP_FLAGS[engine]
        for context, plan in version_plans:
            emitted = {token.split("=", 1)[0] for token in plan["args"] if token.startswith("-")}
            assert not emitted & banned, (version, context, sorted(emitted & banned))


@pytest.mark.parametrize("engine,extra", [(e, x) for e in sorted(REJECTED) for x in REJECTED[e]],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_injecting_a_removed_flag_or_bad_choice_is_rejected(real, matrix, engine, extra):
    version = KN["default_versions"][engine]
    base = _base_plans(matrix[0])[engine]
    assert real.check(engine, version, base["args"])["ok"], "the base plan itself must parse"
    verdict = real.check(engine, version, list(base["args"]) + extra)
    assert not verdict["ok"], "the real %s parser accepted %s" % (engine, " ".join(extra))
    assert verdict["error"]


@pytest.mark.parametrize("engine,extra,meaning", [(e, x, m) for e in sorted(PREFIX_TRAPS) for x, m in PREFIX_TRAPS[e]],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_prefix_traps_are_accepted_as_something_else(real, matrix, engine, extra, meaning):
    """--enable-flashinfer is no error: argparse expands it to another flag. The check must see that."""
    version = KN["default_versions"][engine]
    base = _base_plans(matrix[0])[engine]
    verdict = real.check(engine, version, list(base["args"]) + extra)
    assert verdict["ok"] and verdict["abbreviations"] == [[extra[0], meaning]], verdict


@pytest.mark.parametrize("engine,version", VERSIONS, ids=VERSION_IDS)
def test_knowledge_table_removed_flags_are_not_real_flags(real, engine, version):
    """removed_flags of a version must not be exact options of its real parser (unless their
    `since` is a later release); its deprecated_flags must be."""
    ev = KN["engines"][engine][version]
    resolved = real.get(engine, version, {"engine": engine, "resolve": _table_flags(engine, version)})["resolved"]
    problems = []
    for flag, info in ev["removed_flags"].items():
        if engine_flags.removed_in(info.get("since", ""), version) and resolved[flag]["kind"] == "exact":
            problems.append("%s %s: removed flag %s (since %s) is still an option"
                            % (engine, version, flag, info.get("since")))
    for flag in ev["deprecated_flags"]:
        if resolved[flag]["kind"] != "exact":
            problems.append("%s %s: deprecated flag %s is %s" % (engine, version, flag, resolved[flag]))
    assert not problems, "\n".join(problems)
