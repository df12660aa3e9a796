"""Every plan the planner can produce, fed to the REAL parsers of the pinned SGLang and vLLM.

The engines are pip-installed without their GPU dependencies in `.venv-parsers`
(tests/parsers/setup_venv.sh); tests/parsers/real_parsers.py runs there and parses each argv with
the engines' own add_cli_args / make_arg_parser (details in its docstring and README.md). This
module runs in the project venv: it builds the plans, sends every distinct argv to one
real_parsers.py process for the whole session (importing the engines takes ~10 s), and checks the
verdicts.

Without `.venv-parsers` the tests skip, unless GPUFLEET_REQUIRE_REAL_PARSERS is set (scripts/test.sh
sets it): then a missing or stale venv is a failure.
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
from ansible_collections.gpufleet.serving.plugins.module_utils.engine_plan import PlanError, build_plan
from ansible_collections.gpufleet.serving.plugins.module_utils.knowledge import load_knowledge
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.environ.get("GPUFLEET_PARSERS_VENV") or os.path.join(ROOT, ".venv-parsers")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
CHECKER = os.path.join(HERE, "real_parsers.py")
REQUIRED = bool(os.environ.get("GPUFLEET_REQUIRE_REAL_PARSERS"))

if os.path.join(ROOT, "tests", "unit") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tests", "unit"))
import gpu_fixtures  # noqa: E402  (tests/unit/gpu_fixtures.py)

KN = load_knowledge()
ENGINES = sorted(KN["engines"])
PRESETS = list(KN["presets"])
GPU_COUNTS = (1, 2, 4, 8)
MODELS = sorted(name for name in os.listdir(gpu_fixtures.MODELS_DIR)
                if os.path.isfile(os.path.join(gpu_fixtures.MODELS_DIR, name, "config.json")))
SMALL_MODEL = "Qwen2.5-0.5B-Instruct" if "Qwen2.5-0.5B-Instruct" in MODELS else MODELS[0]
# Stand-in for the API-key YAML that the SGLang plan reads through --config at run time.
API_KEY_VALUE = "real-parser-test-key"

# Flags whose removal the real parsers must report (shared/reference/engine_reference.md §1).
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
TRAP_FLAGS = {engine: {extra[0] for extra, _ in traps} for engine, traps in PREFIX_TRAPS.items()}


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


def _variants(engine):
    """(label, build_plan keyword arguments, model changes) beyond the plain preset plan."""
    version = KN["default_versions"][engine]
    ev = KN["engines"][engine][version]
    yield "api_key", {"api_key": True}, {}
    for algorithm in sorted(ev["speculative"]["algorithms"]):
        # The path the engine role mounts the draft snapshot at (module_utils/engine_draft.py).
        yield "draft-%s" % algorithm, {}, {"draft_path": DRAFT_MOUNT,
                                          "draft_algorithm": algorithm, "draft_weights_bytes": 1 << 28}


def _pins(engine, card):
    """Overrides that pin each value the knowledge table allows for this engine on this card."""
    cc = _facts(card, 1)["compute_capability"]
    ae = KN["archs"].get(cc, {}).get(engine) or {}
    names = KN["engines"][engine][KN["default_versions"][engine]]["flags"]
    for key, flag in (("attention_backends", names["attention"]), ("kv_cache_dtypes", names["kv_cache_dtype"]),
                      ("quantization", names["quantization"])):
        for value in ae.get(key) or ():
            yield "pin %s=%s" % (flag, value), {"overrides": {flag: value}}


MLA_MODEL = "DeepSeek-V2-Lite-Chat" if "DeepSeek-V2-Lite-Chat" in MODELS else None


def _mla_pins(engine, card):
    cc = _facts(card, 1)["compute_capability"]
    mla = (KN["archs"].get(cc, {}).get(engine) or {}).get("mla") or {}
    flag = KN["engines"][engine][KN["default_versions"][engine]]["flags"]["attention"]
    for value in mla.get("attention_backends") or ():
        yield "pin mla %s=%s" % (flag, value), {"overrides": {flag: value}}


def _cases():
    """Every (context, engine, build_plan args) the matrix covers."""
    for card, count, engine, name, preset in itertools.product(CARDS, GPU_COUNTS, ENGINES, MODELS, PRESETS):
        yield (card, count, engine, name, preset, "plain"), (card, count, engine, name, preset, {}, {})
    # API key delivery and speculative decoding on every card, one GPU, every model and preset.
    for card, engine, name, preset in itertools.product(CARDS, ENGINES, MODELS, PRESETS):
        for label, kwargs, changes in _variants(engine):
            yield (card, 1, engine, name, preset, label), (card, 1, engine, name, preset, kwargs, changes)
    # Every attention backend / KV cache dtype / quantization the table lists, pinned.
    for card, engine, preset in itertools.product(CARDS, ENGINES, ("high_performance", "balanced")):
        for label, kwargs in _pins(engine, card):
            yield (card, 1, engine, SMALL_MODEL, preset, label), (card, 1, engine, SMALL_MODEL, preset, kwargs, {})
        # The MLA backends of the table (archs.<cc>.<engine>.mla), pinned for an MLA model on 2 GPUs.
        if MLA_MODEL:
            for label, kwargs in _mla_pins(engine, card):
                yield (card, 2, engine, MLA_MODEL, preset, label), (card, 2, engine, MLA_MODEL, preset, kwargs, {})


def _build_all():
    plans, refused = [], collections.Counter()
    for context, (card, count, engine, name, preset, kwargs, changes) in _cases():
        try:
            plan = build_plan(_facts(card, count), engine, _model(name, **changes), preset, knowledge=KN,
                              host="parser-test", **kwargs)
        except PlanError:
            refused[engine] += 1
            continue
        plans.append((context, plan))
    return plans, refused


# ------------------------------------------------------------------------------------------------
# The real parsers, once per session
# ------------------------------------------------------------------------------------------------
def _stamp_state():
    """None when .venv-parsers is usable, else why not."""
    if not os.access(VENV_PYTHON, os.X_OK):
        return "%s is missing: run `bash tests/parsers/setup_venv.sh`" % VENV
    try:
        with open(os.path.join(VENV, ".gpufleet-stamp"), encoding="utf-8") as handle:
            stamp = handle.read().strip()
    except OSError:
        return "%s has no stamp (half-built): run `bash tests/parsers/setup_venv.sh`" % VENV
    digest = hashlib.sha256()
    for name in ("requirements.txt", "setup_venv.sh"):
        with open(os.path.join(HERE, name), "rb") as handle:
            digest.update(handle.read())
    if stamp.split("-py")[0] != digest.hexdigest():
        return "%s is stale (tests/parsers/requirements.txt or setup_venv.sh changed): " \
               "run `bash tests/parsers/setup_venv.sh`" % VENV
    return None


def _need_venv():
    problem = _stamp_state()
    if problem:
        if REQUIRED:
            pytest.fail("GPUFLEET_REQUIRE_REAL_PARSERS is set but " + problem, pytrace=False)
        pytest.skip(problem + " (set GPUFLEET_REQUIRE_REAL_PARSERS=1 to make this a failure)")


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


def _run_checker(requests):
    """One real_parsers.py process over `requests` (JSON strings); its answers in order."""
    started = time.monotonic()
    proc = subprocess.run([VENV_PYTHON, CHECKER], input="\n".join(requests) + "\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, check=False)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != len(requests):
        return None, "FAILED: real_parsers.py exited %s with %d of %d answers; stderr tail:\n%s" % (
            proc.returncode, len(lines), len(requests), proc.stderr[-4000:])
    return [json.loads(line) for line in lines], "%d requests in %.1fs" % (len(requests), time.monotonic() - started)


class RealParsers:
    """Verdicts of real_parsers.py, keyed by request: one process per engine, side by side (each
    imports only its own engine; SGLang's prepare_server_args rebuilds its 532-option parser on
    every call, ~25 ms, so its share dominates)."""

    def __init__(self, requests):
        groups = collections.defaultdict(list)
        for request in requests:
            groups[request.get("engine", "sglang")].append(json.dumps(request, sort_keys=True))
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(groups)) as pool:
            results = dict(zip(groups, pool.map(_run_checker, groups.values())))
        self.answers, self.timings = {}, {}
        for engine, (answers, note) in results.items():
            if answers is None:
                pytest.fail("%s: %s" % (engine, note), pytrace=False)
            self.answers.update(zip(groups[engine], answers))
            self.timings[engine] = note

    def __getitem__(self, request):
        return self.answers[json.dumps(request, sort_keys=True)]

    def check(self, engine, args):
        return self[{"engine": engine, "args": list(args)}]


def _base_plans(plans):
    """One ordinary, accepted plan per engine to inject flags into."""
    base = {}
    for context, plan in plans:
        card, count, engine, name, preset, variant = context
        if variant == "plain" and count == 1 and preset == "balanced" and engine not in base and card == "h100":
            base[engine] = plan
    return base


@pytest.fixture(scope="session")
def matrix():
    plans, refused = _build_all()
    return plans, refused


@pytest.fixture(scope="session")
def real(matrix, tmp_path_factory):
    _need_venv()
    plans, _ = matrix
    config_file = _api_key_file(tmp_path_factory)
    requests = [{"info": True}]
    seen = set()
    for _context, plan in plans:
        request = {"engine": plan["engine"], "args": _runnable(plan["args"], config_file)}
        key = json.dumps(request, sort_keys=True)
        if key not in seen:
            seen.add(key)
            requests.append(request)
    for engine, plan in _base_plans(plans).items():
        for extra in REJECTED[engine] + [extra for extra, _ in PREFIX_TRAPS[engine]]:
            requests.append({"engine": engine, "args": list(plan["args"]) + extra})
    for engine in ENGINES:
        ev = KN["engines"][engine][KN["default_versions"][engine]]
        flags = sorted(set(ev["removed_flags"]) | set(ev["deprecated_flags"]) | TRAP_FLAGS[engine])
        requests.append({"engine": engine, "resolve": flags})
    parsers = RealParsers(requests)
    parsers.config_file = config_file
    return parsers


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
def test_parser_venv_has_the_planned_engine_versions(real):
    info = real[{"info": True}]
    assert info["stubs"] == [], "real_parsers.py stubs %s; update README.md" % info["stubs"]
    for engine in ENGINES:
        planned = sorted(KN["engines"][engine])
        assert planned == [info["versions"][engine]], (
            "the knowledge table plans %s %s but .venv-parsers has %s %s: pin it in tests/parsers/requirements.txt"
            % (engine, planned, engine, info["versions"][engine]))


def test_every_generated_plan_parses_with_the_real_parsers(real, matrix, capsys):
    plans, refused = matrix
    produced = collections.Counter(plan["engine"] for _, plan in plans)
    assert all(produced[engine] for engine in ENGINES), "no plan at all for some engine: %s" % produced
    failures, abbreviated = [], []
    distinct = set()
    for context, plan in plans:
        engine = plan["engine"]
        assert plan["engine_version"] == KN["default_versions"][engine]
        assert plan["argv"] == plan["entrypoint"] + plan["args"], context
        args = _runnable(plan["args"], real.config_file)
        distinct.add((engine, tuple(args)))
        verdict = real.check(engine, args)
        if not verdict["ok"]:
            failures.append("%s\n    %s\n    -> [%s] %s" % (context, " ".join(plan["argv"]), verdict["stage"],
                                                          verdict["error"]))
        elif verdict["abbreviations"]:
            abbreviated.append("%s: %s" % (context, verdict["abbreviations"]))
    summary = ("%d plans (%s), %d distinct argvs, %d combinations refused by the planner (%s)"
               % (len(plans), dict(produced), len(distinct), sum(refused.values()), dict(refused)))
    line = "real-parser check: %s; real_parsers.py: %s" % (summary, real.timings)
    with capsys.disabled():     # in the CI log even when the test passes
        print("\n" + line)
    assert not failures, "%d plan(s) rejected by the real parsers; %s\n%s" % (
        len(failures), summary, "\n".join(failures[:20]))
    assert not abbreviated, "plans relying on argparse prefix matching:\n" + "\n".join(abbreviated[:20])


def test_planner_never_emits_removed_or_trap_flags(matrix):
    plans, _ = matrix
    for context, plan in plans:
        ev = KN["engines"][plan["engine"]][plan["engine_version"]]
        banned = set(ev["removed_flags"]) | TRAP_FLAGS[plan["engine"]]
        emitted = {token.split("=", 1)[0] for token in plan["args"] if token.startswith("-")}
        assert not emitted & banned, (context, sorted(emitted & banned))


@pytest.mark.parametrize("engine,extra", [(e, x) for e in sorted(REJECTED) for x in REJECTED[e]],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_injecting_a_removed_flag_or_bad_choice_is_rejected(real, matrix, engine, extra):
    base = _base_plans(matrix[0])[engine]
    assert real.check(engine, base["args"])["ok"], "the base plan itself must parse"
    verdict = real.check(engine, list(base["args"]) + extra)
    assert not verdict["ok"], "the real %s parser accepted %s" % (engine, " ".join(extra))
    assert verdict["error"]


@pytest.mark.parametrize("engine,extra,meaning", [(e, x, m) for e in sorted(PREFIX_TRAPS) for x, m in PREFIX_TRAPS[e]],
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_prefix_traps_are_accepted_as_something_else(real, matrix, engine, extra, meaning):
    """--enable-flashinfer is no error: argparse expands it to another flag. The check must see that."""
    base = _base_plans(matrix[0])[engine]
    verdict = real.check(engine, list(base["args"]) + extra)
    assert verdict["ok"] and verdict["abbreviations"] == [[extra[0], meaning]], verdict


def test_knowledge_table_removed_flags_are_not_real_flags(real):
    """removed_flags in data/knowledge.yml must not be exact options of the real parser; deprecated ones must."""
    problems = []
    for engine in ENGINES:
        ev = KN["engines"][engine][KN["default_versions"][engine]]
        flags = sorted(set(ev["removed_flags"]) | set(ev["deprecated_flags"]) | TRAP_FLAGS[engine])
        resolved = real[{"engine": engine, "resolve": flags}]["resolved"]
        for flag in ev["removed_flags"]:
            if resolved[flag]["kind"] == "exact":
                problems.append("%s: removed flag %s is still an option" % (engine, flag))
        for flag in ev["deprecated_flags"]:
            if resolved[flag]["kind"] != "exact":
                problems.append("%s: deprecated flag %s is %s" % (engine, flag, resolved[flag]))
    assert not problems, "\n".join(problems)

