"""Rebuild an engine's argparse parser from its pinned flag dump (data/engine_flags/*.json).

The dump records what the real parser accepts: option strings, choices, nargs and the
name of the type/action callable. Custom types whose inner type the dump does not record
(vLLM `_optional_type`, JSON/dataclass parsers) are accepted as strings.

`allow_abbrev=False` on purpose: the real engines accept unambiguous prefixes
(`--enable-flashinfer` silently becomes `--enable-flashinfer-allreduce-fusion` in SGLang),
so a collection that emits prefixes would only work by accident. The stand-in refuses them.
"""
import argparse
import json
import os
import re

DEFAULT_VERSIONS = {"sglang": "0.5.23", "vllm": "0.33.0"}
_HERE = os.path.dirname(os.path.abspath(__file__))


def flags_dir():
    """In the image, engine_flags/ beside the package (lab/labctl.py copies data/engine_flags there);
    in a checkout, the collection's data/engine_flags."""
    if os.environ.get("STANDIN_FLAGS_DIR"):
        return os.environ["STANDIN_FLAGS_DIR"]
    beside = os.path.join(os.path.dirname(_HERE), "engine_flags")
    return beside if os.path.isdir(beside) else os.path.join(_HERE, "..", "..", "..", "data", "engine_flags")


def load_dump(engine, version):
    with open(os.path.join(flags_dir(), f"{engine}-{version}.json"), encoding="utf-8") as f:
        return json.load(f)


def human_readable_int(value):
    """'32k' -> 32000, '32K' -> 32768 (both engines: lowercase is decimal, uppercase binary)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)", value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid human-readable integer: {value!r}")
    number, suffix = m.groups()
    scale = 1
    if suffix:
        base = 1000 if suffix.islower() else 1024
        scale = base ** ("kmgt".index(suffix.lower()) + 1)
    return int(float(number) * scale)


def human_readable_int_or_auto(value):
    return -1 if value.strip().lower() in ("auto", "-1") else human_readable_int(value)


def optional_str(value):
    return None if value == "None" else value


def json_value(value):
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON: {exc}") from None


TYPES = {
    "int": int,
    "float": float,
    "human_readable_int": human_readable_int,
    "human_readable_int_or_auto": human_readable_int_or_auto,
    "_optional_type": optional_str,
    "nullable_str": optional_str,
    "loads": json_value,
}


class _OnOffAction(argparse.Action):
    """`--x/--no-x` and `--enable-x/--disable-x` pairs (argparse.BooleanOptionalAction and
    vLLM's EnableDisableAction): the option named after `dest` (or a short alias) sets True."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.positive = "--" + dest.replace("_", "-")

    def __call__(self, parser, namespace, values, option_string=None):
        negative = option_string.startswith("--") and option_string != self.positive
        setattr(namespace, self.dest, not negative)


def _add_entry(parser, entry):
    action = entry["action"]
    kwargs = {"dest": entry["dest"], "default": entry["default"]}
    if action == "_HelpAction":
        return  # argparse adds -h/--help itself
    if action in ("_StoreTrueAction", "DeprecatedStoreTrueAction"):
        kwargs["action"] = "store_true"
    elif action in ("BooleanOptionalAction", "EnableDisableAction"):
        kwargs["action"] = _OnOffAction
    else:
        if action == "_AppendAction":
            kwargs["action"] = "append"
        if entry["nargs"] not in (None, 0):
            kwargs["nargs"] = entry["nargs"]
        if entry["choices"]:
            kwargs["choices"] = entry["choices"]
        kwargs["type"] = TYPES.get(entry["type"] or "", str)
    parser.add_argument(*entry["flags"], **kwargs)


def build_parser(entries, prog, positional_model=None):
    """`positional_model` names the dest of an optional leading model argument
    (`vllm serve <model_tag>`); the dumps only hold options. A short usage line keeps the
    error visible in `docker logs --tail` (argparse prints usage before the error)."""
    usage = f"{prog} [{positional_model}] [options]" if positional_model else f"{prog} [options]"
    parser = argparse.ArgumentParser(prog=prog, usage=usage, allow_abbrev=False)
    if positional_model:
        parser.add_argument(positional_model, nargs="?")
    for entry in entries:
        _add_entry(parser, entry)
    return parser
