#!/usr/bin/env python3
"""Parse engine command lines with the REAL parsers of the pinned SGLang and vLLM.

Runs inside `.venv-parsers` (tests/parsers/setup_venv.sh), never in the project venv.

Input (stdin), one JSON object per line:
  {"engine": "sglang" | "vllm", "args": [...]}   the engine's arguments without the entrypoint
                                                   (vLLM: the `vllm serve` arguments, positional
                                                   model first)
  {"engine": "sglang" | "vllm", "resolve": ["--flag", ...]}
                                                   how the real parser resolves bare option strings
  {"info": true}                                   versions of what is installed, and what is stubbed
Output (stdout), one JSON object per input line, in order:
  args:    {"ok": bool, "error": str | null, "stage": str | null, "abbreviations": [[given, resolved]]}
           stage is where it was rejected; abbreviations lists option strings the parser accepted
           only through argparse's prefix matching (e.g. --enable-flashinfer ->
           --enable-flashinfer-allreduce-fusion), which a full-flag-name plan must never rely on.
  resolve: {"ok": true, "resolved": {flag: {"kind": "exact"|"prefix"|"ambiguous"|"unknown",
                                            "matches": [...]}}}
  info:    {"ok": true, "versions": {...}, "stubs": [...], "environment": {...}}
`python real_parsers.py --self-check` parses a few known-good and known-bad command lines of the
engines installed here and exits non-zero on a surprise (setup_venv.sh runs it).
`python real_parsers.py --dump ENGINE` prints the engine's flag dump (data/engine_flags/*.json;
scripts/engine_flags.py dump calls it).

One venv holds the newest SGLang and vLLM (.venv-parsers); each older version of the knowledge table
has a venv of its own. Where an older release differs, the class below says so (SGLang 0.5.1.post2:
resolution in __post_init__, not run; vLLM 0.26.0: make_arg_parser's module, the CPU platform).

What runs, per engine (the same calls the engines' own launchers make, minus the launch):
  SGLang 0.5.23: sglang.srt.server_args.prepare_server_args(argv), which is what
    `python3 -m sglang.launch_server` calls: argparse.ArgumentParser + ServerArgs.add_cli_args,
    --config YAML merging, parse_args, ServerArgs.from_cli_args. In 0.5.23 ServerArgs.__post_init__
    is empty; the GPU/model-dependent resolution (ServerArgs.resolve_once) is NOT run: it needs the
    model checkpoint and a CUDA device.
  vLLM 0.33.0: the `vllm` CLI's top-level FlexibleArgumentParser with a `serve` subparser built by
    vllm.entrypoints.common.cli_args.make_arg_parser (as ServeSubcommand.subparser_init does), then
    validate_parsed_serve_args (ServeSubcommand.validate), then args.model = args.model_tag and
    AsyncEngineArgs.from_cli_args (as ServeSubcommand.cmd / run_server do; its __post_init__
    validates the JSON config flags). create_engine_config() is NOT run (it needs the model and a
    GPU); instead the values vLLM only checks there are checked with vLLM's own validators:
    --attention-backend (AttentionConfig.validate_backend_before), --kv-cache-dtype
    (config.cache.is_known_kv_cache_dtype), --quantization (QUANTIZATION_METHODS, as
    ModelConfig._verify_quantization) and the --speculative-config method (SpeculativeMethod).

Speed-up, not a stub: SGLang's ServerArgs.add_cli_args is wrapped so that prepare_server_args reuses
the actions of one parser built by the real add_cli_args instead of rebuilding 532 options per
call (guarded: see class SGLang; GPUFLEET_REAL_PARSERS_NO_TEMPLATE=1 turns it off).

Stubs: NONE. Every import is the real package (triton included: sglang.srt.utils.common imports it
at module level; the CPU wheel imports fine without a GPU). The only environment settings are
VLLM_TARGET_DEVICE=cpu (vLLM's platform detection otherwise finds no CUDA/ROCm/XPU/TPU and raises
"Failed to infer device type" while building the parser; with it vLLM uses its own CpuPlatform,
and the resulting parser matches data/engine_flags/vllm-0.33.0.json flag for flag) no-telemetry
switches, HF_ENDPOINT pointed at a closed local port, and HF_HUB_OFFLINE removed (see below).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
import typing

os.environ.update({
    "VLLM_TARGET_DEVICE": "cpu",
    # Any Hugging Face Hub request fails at once instead of waiting on a network that is not there.
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
})
# The plans run with HF_HUB_OFFLINE=1, where EngineArgs.__post_init__ resolves the model argument to
# a local directory (vllm.transformers_utils.repo_utils.get_model_path): /models/<name> exists in the
# container, not here, so that step would fail on every plan. Without the variable it is skipped.
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_key, None)

STUBS: list[str] = []   # nothing is stubbed; see the module docstring


# ------------------------------------------------------------------------------------------------
# Prefix-match detection: argparse resolves an unknown --foo to the unique option it prefixes.
# Every ArgumentParser (FlexibleArgumentParser does not override it) classifies each token through
# _parse_optional; record tokens whose resolved option string differs from what was written.
# ------------------------------------------------------------------------------------------------
_ABBREVIATIONS: list[list[str]] | None = None
_orig_parse_optional = argparse.ArgumentParser._parse_optional


def _recording_parse_optional(self, arg_string):
    result = _orig_parse_optional(self, arg_string)
    if _ABBREVIATIONS is not None and result:
        candidates = result if isinstance(result, list) else [result]   # 3.12+ returns a list
        for candidate in candidates:
            action, option_string = candidate[0], candidate[1]
            if action is None or option_string is None:
                continue
            written = arg_string.split("=", 1)[0]
            if written == option_string:
                continue
            if not arg_string.startswith("--") and arg_string[:2] == option_string:
                continue    # a short option with its value attached (-O3)
            _ABBREVIATIONS.append([written, option_string])
    return result


argparse.ArgumentParser._parse_optional = _recording_parse_optional


class _Capture:
    """Collect abbreviations and whatever the parser prints (argparse errors go to stderr)."""

    def __enter__(self):
        global _ABBREVIATIONS
        self.abbreviations = _ABBREVIATIONS = []
        self.buffer = io.StringIO()
        self._redirects = contextlib.ExitStack()
        self._redirects.enter_context(contextlib.redirect_stderr(self.buffer))
        self._redirects.enter_context(contextlib.redirect_stdout(self.buffer))
        return self

    def __exit__(self, *exc):
        global _ABBREVIATIONS
        _ABBREVIATIONS = None
        self._redirects.close()
        return False

    def accept(self):
        return {"ok": True, "error": None, "stage": None, "abbreviations": self.abbreviations}

    def reject(self, stage, error):
        return {"ok": False, "error": error, "stage": stage, "abbreviations": self.abbreviations}

    def argparse_error(self, stage, code):
        return self.reject(stage, _argparse_message(self.buffer.getvalue(), code))


def _argparse_message(text, code):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if "error:" in line]
    if errors:
        return "\n".join(lines[errors[0]:])     # the error line plus any hint vLLM appends
    return "\n".join(lines[-3:]) or "argparse exited with code %r" % (code,)


# ------------------------------------------------------------------------------------------------
# SGLang
# ------------------------------------------------------------------------------------------------
def _parser_signature(parser):
    """Everything about a parser's options that parsing depends on."""
    def plain(value):
        if isinstance(value, (str, int, float, bool, type(None))):
            return value
        if isinstance(value, (list, tuple, set, frozenset)):
            return [plain(v) for v in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)]
        return getattr(value, "__qualname__", None) or repr(value)
    actions = [(type(a).__name__, a.option_strings, a.dest, plain(a.nargs), plain(a.const), plain(a.default),
                plain(a.type), plain(a.choices), a.required) for a in parser._actions]
    groups = [[a.dest for a in g._group_actions] for g in parser._mutually_exclusive_groups]
    return json.dumps([actions, groups, plain(parser._defaults), parser.allow_abbrev, parser.prefix_chars],
                      sort_keys=True, default=repr)


class SGLang:
    """prepare_server_args builds a fresh 532-option parser on every call (~25 ms, most of the
    time of a check). To keep the real call path but not its cost, ServerArgs.add_cli_args is
    wrapped: when handed the fresh parser of prepare_server_args it copies in the actions of one
    parser built once by the REAL add_cli_args (argparse's own `parents=` mechanism,
    _add_container_actions). The wrapper is installed only if a parser made that way has exactly
    the options, defaults, choices, types and groups of one built by add_cli_args itself; set
    GPUFLEET_REAL_PARSERS_NO_TEMPLATE=1 to skip it."""

    def __init__(self):
        import sglang
        from sglang.srt import server_args

        self.version = getattr(sglang, "__version__", None)
        self.module = server_args
        self.prepare_server_args = server_args.prepare_server_args
        self.real_add_cli_args = server_args.ServerArgs.add_cli_args
        self.template = None
        # Up to 0.5.x (x < ~20) ServerArgs.__post_init__ held the GPU/model-dependent resolution
        # (get_device(), GPU memory, the model's HF config) that later releases moved to
        # resolve_once. It is not run, as resolve_once is not run on the newer releases: parse
        # with the real add_cli_args parser, then build the real ServerArgs fields through
        # from_cli_args on a subclass whose __post_init__ does nothing.
        self.unresolved = None
        if not hasattr(server_args.ServerArgs, "resolve_once"):
            class Unresolved(server_args.ServerArgs):
                def __post_init__(self):
                    pass

            self.unresolved = Unresolved
            self.shared_parser = self.parser()
        elif not os.environ.get("GPUFLEET_REAL_PARSERS_NO_TEMPLATE"):
            self._install_template()

    def _install_template(self):
        template = argparse.ArgumentParser(prog="sglang serve", add_help=False)
        self.real_add_cli_args(template)

        def from_template(parser):
            parser._add_container_actions(template)
            parser._defaults.update(template._defaults)

        fast = argparse.ArgumentParser(prog="sglang serve")
        from_template(fast)
        if _parser_signature(fast) != _parser_signature(self.parser()):
            print("real_parsers: template parser differs from add_cli_args; using the slow path", file=sys.stderr)
            return
        real = self.real_add_cli_args

        def add_cli_args(parser):
            if [a.dest for a in parser._actions] == ["help"] and parser.prog == "sglang serve":
                from_template(parser)
            else:
                real(parser)

        self.module.ServerArgs.add_cli_args = staticmethod(add_cli_args)
        self.template = template

    def parser(self):
        parser = argparse.ArgumentParser(prog="sglang serve")
        self.real_add_cli_args(parser)
        return parser

    def check(self, args):
        with _Capture() as capture:
            try:
                # parse_args (SystemExit on a rejected flag or choice), --config merging
                # (ValueError), ServerArgs.from_cli_args (TypeError on a bad field)
                if self.unresolved is not None:     # parse_args + from_cli_args, see __init__
                    server_args = self.unresolved.from_cli_args(self.shared_parser.parse_args(list(args)))
                else:
                    server_args = self.prepare_server_args(list(args))
                if not isinstance(server_args, self.module.ServerArgs):
                    raise TypeError("prepare_server_args returned %r" % type(server_args))
            except SystemExit as exc:
                return capture.argparse_error("argparse", exc.code)
            except Exception as exc:
                return capture.reject("prepare_server_args", "%s: %s" % (type(exc).__name__, exc))
        return capture.accept()


# ------------------------------------------------------------------------------------------------
# vLLM
# ------------------------------------------------------------------------------------------------
def _literal_values(tp):
    values = []
    for arg in typing.get_args(tp):
        if typing.get_origin(arg) is typing.Literal or typing.get_args(arg):
            values += _literal_values(arg)
        elif isinstance(arg, str):
            values.append(arg)
    return values


def _vllm_cpu_platform():
    """vLLM >= 0.3x picks its CpuPlatform from VLLM_TARGET_DEVICE=cpu; older releases ignore the
    variable (only a `+cpu` build or macOS select it) and end on UnspecifiedPlatform, which cannot
    build the parser. There, select the same CpuPlatform the variable selects in later releases."""
    from vllm import platforms

    # `import vllm` may already have resolved it (to UnspecifiedPlatform, whose device_type is "")
    if not platforms.current_platform.device_type:
        from vllm.platforms.cpu import CpuPlatform

        platforms._current_platform = CpuPlatform()
        return "vllm.platforms.current_platform = CpuPlatform() (VLLM_TARGET_DEVICE not read here)"
    return None


class VLLM:
    def __init__(self):
        self.platform_note = _vllm_cpu_platform()
        import vllm
        from vllm.config import speculative as speculative_config
        from vllm.config.attention import AttentionConfig
        from vllm.config import cache as cache_config
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.model_executor.layers import quantization
        try:    # make_arg_parser moved from entrypoints.openai (<= 0.2x) to entrypoints.common
            from vllm.entrypoints.common import cli_args
        except ImportError:
            from vllm.entrypoints.openai import cli_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        self.version = getattr(vllm, "__version__", None)
        self.FlexibleArgumentParser = FlexibleArgumentParser
        self.make_arg_parser = cli_args.make_arg_parser
        self.validate_parsed_serve_args = cli_args.validate_parsed_serve_args
        self.AsyncEngineArgs = AsyncEngineArgs
        self.AttentionConfig = AttentionConfig
        if hasattr(cache_config, "is_known_kv_cache_dtype"):
            self.is_known_kv_cache_dtype = cache_config.is_known_kv_cache_dtype
            self.kv_cache_dtypes = cache_config.KV_CACHE_DTYPES
        else:   # older vLLM: the CacheDType Literal, which argparse's choices already enforce
            self.kv_cache_dtypes = _literal_values(cache_config.CacheDType)
            self.is_known_kv_cache_dtype = self.kv_cache_dtypes.__contains__
        self.quantization_methods = quantization.QUANTIZATION_METHODS
        self.speculative_methods = _literal_values(speculative_config.SpeculativeMethod)
        with contextlib.redirect_stdout(sys.stderr):
            self.top, self.serve = self._build()

    def _build(self):
        # As vllm.entrypoints.cli.main.main + ServeSubcommand.subparser_init (importing those
        # modules would pull in the whole server/executor stack, which parsing does not use).
        top = self.FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
        subparsers = top.add_subparsers(required=False, dest="subparser")
        serve = subparsers.add_parser("serve", usage="vllm serve [model_tag] [options]")
        return top, self.make_arg_parser(serve)

    def parser(self):
        return self.serve

    def check(self, args):
        stage = "argparse"
        with _Capture() as capture:
            try:
                namespace = self.top.parse_args(["serve"] + list(args))
                stage = "validate_parsed_serve_args"
                self.validate_parsed_serve_args(namespace)
                stage = "from_cli_args"
                if getattr(namespace, "model_tag", None) is not None:
                    namespace.model = namespace.model_tag      # ServeSubcommand.cmd
                engine_args = self.AsyncEngineArgs.from_cli_args(namespace)
                stage = "engine_values"
                self._values(engine_args)
            except SystemExit as exc:
                return capture.argparse_error(stage, exc.code)
            except Exception as exc:
                return capture.reject(stage, "%s: %s" % (type(exc).__name__, exc))
        return capture.accept()

    def _values(self, engine_args):
        """The checks create_engine_config() would make on values argparse lets through."""
        if engine_args.attention_backend is not None:
            try:
                self.AttentionConfig.validate_backend_before(engine_args.attention_backend)
            except KeyError:
                raise ValueError("--attention-backend %r is not an AttentionBackendEnum member"
                                 % (engine_args.attention_backend,)) from None
        kv = engine_args.kv_cache_dtype
        if kv not in (None, "auto") and not self.is_known_kv_cache_dtype(kv):
            raise ValueError("Invalid kv_cache_dtype: %r. Valid values are: %s" % (kv, self.kv_cache_dtypes))
        quant = engine_args.quantization
        if quant is not None and quant not in self.quantization_methods:
            raise ValueError("Unknown quantization method: %r. Must be one of %s"
                             % (quant, self.quantization_methods))
        spec = engine_args.speculative_config
        if isinstance(spec, dict) and spec.get("method") is not None \
                and spec["method"] not in self.speculative_methods:
            raise ValueError("--speculative-config method %r is not one of %s"
                             % (spec["method"], self.speculative_methods))


# ------------------------------------------------------------------------------------------------
def _resolve(parser, flags):
    resolved = {}
    for flag in flags:
        if flag in parser._option_string_actions:
            resolved[flag] = {"kind": "exact", "matches": [flag]}
            continue
        tuples = parser._get_option_tuples(flag) if flag.startswith("-") else []
        matches = sorted({t[1] for t in tuples})
        kind = "unknown" if not matches else "prefix" if len(matches) == 1 else "ambiguous"
        resolved[flag] = {"kind": kind, "matches": matches}
    return {"ok": True, "resolved": resolved}


ENGINES = {"sglang": SGLang, "vllm": VLLM}
_loaded: dict = {}


def engine(name):
    if name not in _loaded:
        with contextlib.redirect_stdout(sys.stderr):
            _loaded[name] = ENGINES[name]()
    return _loaded[name]


def _json_value(value):
    """A default or choice as the dumps hold it: JSON values as they are, anything else (enums,
    config dataclasses) as its repr."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _ordered(choices):
    # A set's order changes with the process's hash seed (SGLang's --sampling-backend): sort it so
    # that two dumps of one version are identical.
    if isinstance(choices, (set, frozenset)):
        return sorted(choices, key=lambda c: (c is None, str(c)))
    return choices


def dump(name):
    """The engine's option actions as data/engine_flags/<engine>-<version>.json holds them: one
    entry per optional action of the parser the checks use (vLLM: make_arg_parser's `serve`
    parser, whose positional model_tag is left out; SGLang: a fresh add_cli_args parser)."""
    entries = []
    for action in engine(name).parser()._actions:
        if not action.option_strings:
            continue
        entry = {
            "flags": list(action.option_strings),
            "dest": action.dest,
            "default": _json_value(action.default),
            "choices": None if action.choices is None else [_json_value(c) for c in _ordered(action.choices)],
            "action": type(action).__name__,
            "nargs": action.nargs,
            "type": None if action.type is None else getattr(action.type, "__name__", repr(action.type)),
            "help": action.help,
        }
        if name == "vllm":      # the vLLM dumps carry argparse's `deprecated` (Python 3.13+; else null)
            entry["deprecated"] = getattr(action, "deprecated", None)
        entries.append(entry)
    return entries


def _info():
    import importlib.metadata as md

    versions = {}
    for dist in ("sglang", "vllm", "torch", "transformers", "triton", "pydantic", "fastapi"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {"ok": True, "versions": versions, "stubs": STUBS, "python": sys.version.split()[0],
            "environment": {k: os.environ.get(k) for k in ("VLLM_TARGET_DEVICE", "HF_ENDPOINT", "HF_HUB_OFFLINE")}}


def handle(request):
    if request.get("info"):
        return _info()
    name = request.get("engine")
    if name not in ENGINES:
        return {"ok": False, "error": "unknown engine %r" % (name,), "stage": "request", "abbreviations": []}
    checker = engine(name)
    if "resolve" in request:
        return _resolve(checker.parser(), request["resolve"])
    return checker.check(request["args"])


def serve(stdin, stdout):
    for line in stdin:
        if not line.strip():
            continue
        try:
            result = handle(json.loads(line))
        except Exception:   # a bug here, not a verdict: report it as a rejection with the trace
            result = {"ok": False, "error": traceback.format_exc(), "stage": "internal", "abbreviations": []}
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()


SELF_CHECK = [
    ("sglang", ["--model-path", "/models/x", "--host", "0.0.0.0", "--port", "30000", "--tp-size", "1",
                "--attention-backend", "fa3", "--kv-cache-dtype", "fp8_e4m3", "--mem-fraction-static", "0.85",
                "--context-length", "8192", "--enable-metrics"], True),
    ("sglang", ["--model-path", "/models/x", "--disable-flashinfer"], False),
    ("sglang", ["--model-path", "/models/x", "--gpu-memory-utilization", "0.9"], False),
    ("vllm", ["/models/x", "--host", "0.0.0.0", "--port", "8000", "--tensor-parallel-size", "1",
              "--attention-backend", "FLASH_ATTN", "--kv-cache-dtype", "fp8", "--gpu-memory-utilization", "0.9",
              "--max-model-len", "8192"], True),
    ("vllm", ["/models/x", "--swap-space", "4"], False),
    ("vllm", ["/models/x", "--attention-backend", "NOT_A_BACKEND"], False),
]


def installed_engines():
    """The engines this venv holds (one per-version venv holds one engine)."""
    import importlib.metadata as md

    names = []
    for name in ENGINES:
        try:
            md.version(name)
            names.append(name)
        except md.PackageNotFoundError:
            pass
    return names


def self_check():
    failures = 0
    print(json.dumps(_info()))
    names = installed_engines()
    if not names:
        print("FAIL no engine installed")
        return 1
    for name, args, expected in SELF_CHECK:
        if name not in names:
            continue
        result = engine(name).check(args)
        # accepted only through a prefix match counts as rejected: the flag itself does not exist
        good = (result["ok"] and not result["abbreviations"]) is expected
        failures += not good
        print("%s %s %s -> %s" % ("ok  " if good else "FAIL", name, " ".join(args), result))
    return 1 if failures else 0


def main(argv):
    # Engines log to stdout (vLLM's default handler) and C extensions may write to fd 1: keep fd 1
    # for the JSON results only by moving everything else to stderr.
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    if len(argv) == 3 and argv[1] == "--dump" and argv[2] in ENGINES:
        json.dump(dump(argv[2]), results, indent=1)     # as the committed dumps: no final newline
        results.flush()
        return 0
    if argv[1:] == ["--self-check"]:
        with contextlib.redirect_stdout(results):
            code = self_check()
        results.flush()
        return code
    serve(sys.stdin, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
