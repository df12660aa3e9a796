"""Command lines of the real engines -> a validated Config -> serve().

Exit codes follow the real engines: 2 for a command line argparse refuses, 1 for a model
the loader cannot use.
"""
import json
import os
import sys

from . import flags, model
from .server import Config, log, serve

SECRET_DESTS = ("api_key", "admin_api_key")


def _env_float(name, default):
    return float(os.environ.get(name, default))


def usage_error(prog, message):
    """What argparse prints for a refused command line, with a short usage line (the dumps' full usage
    would push the error out of `docker logs --tail`): exit 2, as the real engines."""
    usage = "%s [model_tag] [options]" % prog if prog.startswith("vllm") else "%s [options]" % prog
    log("usage: %s\n%s: error: %s" % (usage, prog, message), sys.stderr)
    raise SystemExit(2)


def _refuse_other_engine(engine):
    """An image tagged as one engine's real image has no other engine in it (lmsysorg/sglang has no vllm)."""
    if flags.image_engine() not in ("", engine):
        log("[standin] %s: not found: this image stands in for %s %s" % (engine, flags.image_engine(),
                                                                         flags.version_of(flags.image_engine())),
            sys.stderr)
        raise SystemExit(127)


def _parse(engine, argv, prog):
    version = flags.version_of(engine)
    try:
        entries = flags.load_dump(engine, version)
    except FileNotFoundError:
        log(f"[standin] no flag dump for {engine} {version} in {flags.flags_dir()}", sys.stderr)
        raise SystemExit(1) from None
    parser = flags.build_parser(engine, entries, prog)
    try:
        args = flag_check(engine, entries, parser, argv)
        if getattr(args, "config", None):
            # Both engines turn a --config YAML file into command-line options that the command line
            # itself overrides (SGLang server_args_config_parser.py, vLLM FlexibleArgumentParser).
            # Like vLLM's _pull_args_from_config: a leading positional model stays first, so an nargs='+'
            # option from the file (--api-key) cannot swallow it.
            lead = argv[:1] if argv and not argv[0].startswith("-") else []
            args = flag_check(engine, entries, parser, lead + _config_file_argv(args.config) + argv[len(lead):])
    except flags.ArgvError as exc:
        usage_error(prog, exc)
    return version, args


def flag_check(engine, entries, parser, argv):
    """flag_dump.check_argv (the planner's check), then the values converted as the engine does."""
    return flags.convert(engine, entries, flags.flag_dump.check_argv(parser, argv))


def _config_file_argv(path):
    """Options from a flat `key: value` YAML file (JSON is YAML too); the stand-in has no YAML library."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        log(f"error: cannot read config file {path}: {exc.strerror}", sys.stderr)
        raise SystemExit(1) from None
    try:
        items = json.loads(text)
    except ValueError:
        items = dict(line.split(":", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
        items = {k.strip(): v.strip().strip("'\"") for k, v in items.items()}
    argv = []
    for key, value in items.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    return argv


def _config(engine, version, prog, args):
    if engine == "vllm":
        path = args.model_tag or args.model  # cli/serve.py: the positional wins
        names = args.served_model_name or [path]
        keys = args.api_key or [os.environ.get("VLLM_API_KEY")]  # --api-key takes precedence
        host, override = args.host or "0.0.0.0", args.max_model_len
        metrics_route, engine_metrics = True, not args.disable_log_stats
    else:
        if not args.model_path:
            usage_error(prog, "the following arguments are required: --model-path/--model")
        path = args.model_path
        names = [args.served_model_name or path]
        keys = [args.api_key]  # SGLang 0.5.23 reads the key from --api-key only (no env var)
        host, override = args.host, args.context_length
        metrics_route = engine_metrics = args.enable_metrics
    try:
        model_config = model.load_config(engine, path)
    except model.ModelError as exc:
        log(str(exc), sys.stderr)
        raise SystemExit(1) from None
    server_args = {k: ("<redacted>" if k in SECRET_DESTS and v else v) for k, v in vars(args).items()}
    return Config(
        engine=engine, version=version, model_path=path, served_names=names, host=host, port=args.port,
        api_keys=[k for k in keys if k], metrics_route=metrics_route, engine_metrics=engine_metrics,
        context_len=model.context_length(model_config, override), model_config=model_config,
        server_args=server_args, load_s=_env_float("STANDIN_LOAD_SECONDS", 2),
        warmup_s=_env_float("STANDIN_WARMUP_SECONDS", 1),
        token_delay_s=_env_float("STANDIN_TOKEN_DELAY_MS", 10) / 1000.0)


def run(engine, argv, prog):
    _refuse_other_engine(engine)
    version, args = _parse(engine, argv, prog)
    return serve(_config(engine, version, prog, args))


def sglang_launch_server(argv=None):
    """`python3 -m sglang.launch_server [flags]`"""
    return run("sglang", sys.argv[1:] if argv is None else argv, "launch_server.py")


def sglang_cli(argv=None):
    """`sglang serve [model] [flags]` (sglang/cli/main.py + cli/serve.py) and `sglang version`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["version"]:
        _refuse_other_engine("sglang")
        print(f"sglang version: {flags.version_of('sglang')}")
        return 0
    if argv[:1] != ["serve"]:
        log("usage: sglang {serve,generate,version} ...\nsglang: error: expected a subcommand", sys.stderr)
        return 2
    rest = argv[1:]
    if rest and not rest[0].startswith("-"):  # cli/serve.py _normalize_positional_model_path
        rest = ["--model-path", rest[0], *rest[1:]]
    return run("sglang", rest, "sglang serve")


def vllm_cli(argv=None):
    """`vllm serve [model_tag] [flags]` and `vllm --version`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-v"]):
        _refuse_other_engine("vllm")
        print(flags.version_of("vllm"))
        return 0
    if argv[:1] != ["serve"]:
        log("usage: vllm serve [model_tag] [options]\nvllm: error: the stand-in only implements 'serve'",
            sys.stderr)
        return 2
    return run("vllm", argv[1:], "vllm serve")
