"""The stand-in's command-line parser is the collection's own: plugins/module_utils/flag_dump.py
(build_parser_from_dump / check_argv / ArgvError), so the test double refuses exactly what the planner's
check refuses, for whichever engine version it stands in for. lab/labctl.py copies flag_dump.py beside
this package in the image; in a checkout it is loaded from the collection itself.

Only what the stand-in adds on top lives here: which version and dump it stands in for, the dump's
defaults (flag_dump checks argv and leaves defaults out), and the conversion of the values it acts on
(`--context-length 32k`, `--served-model-name None`): flag_dump checks their form, the engines convert.
"""
import argparse
import importlib.util
import os
import re

# What an image built for no engine version in particular (the base image, a checkout) stands in for:
# data/knowledge.yml default_versions (tests/unit/test_engine_standin.py keeps them equal).
DEFAULT_VERSIONS = {"sglang": "0.5.23", "vllm": "0.33.0"}
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)  # /opt/standin in the image, lab/engine_standin in a checkout
_COLLECTION_FLAG_DUMP = os.path.join(_ROOT, "..", "..", "plugins", "module_utils", "flag_dump.py")


def _load_flag_dump():
    """By path: module_utils is no importable package inside the image (and needs no Ansible)."""
    for path in (os.path.join(_ROOT, "flag_dump.py"), _COLLECTION_FLAG_DUMP):
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("flag_dump", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise ImportError("flag_dump.py is neither beside the stand-in nor in the collection (%s)" % _COLLECTION_FLAG_DUMP)


flag_dump = _load_flag_dump()
ArgvError = flag_dump.ArgvError


def flags_dir():
    """In the image, engine_flags/ beside the package (lab/labctl.py copies data/engine_flags there);
    in a checkout, the collection's data/engine_flags."""
    if os.environ.get("STANDIN_FLAGS_DIR"):
        return os.environ["STANDIN_FLAGS_DIR"]
    beside = os.path.join(_ROOT, "engine_flags")
    return beside if os.path.isdir(beside) else os.path.join(_ROOT, "..", "..", "data", "engine_flags")


def image_engine():
    """The engine this image stands in for ('' for the base image: either)."""
    return os.environ.get("STANDIN_IMAGE_ENGINE") or ""


def version_of(engine):
    """The engine version the stand-in is: the one labctl baked into the image it tagged as that version's
    real image (knowledge table engines.<engine>.<version>.image), else DEFAULT_VERSIONS."""
    if image_engine() in ("", engine) and os.environ.get("STANDIN_ENGINE_VERSION"):
        return os.environ["STANDIN_ENGINE_VERSION"]
    return DEFAULT_VERSIONS[engine]


def dump_path(engine, version):
    """The table's flag_dump file name (STANDIN_FLAG_DUMP, baked with the version), else the convention."""
    name = os.environ.get("STANDIN_FLAG_DUMP") if version == os.environ.get("STANDIN_ENGINE_VERSION") else None
    return os.path.join(flags_dir(), name or "%s-%s.json" % (engine, version))


def load_dump(engine, version):
    return flag_dump.load_dump(dump_path(engine, version))


def build_parser(engine, entries, prog):
    """flag_dump's parser, with the dump's defaults (so `args.port` is 30000 / 8000 when not given)."""
    parser = flag_dump.build_parser_from_dump(entries, prog, flag_dump.SUBCOMMAND_POSITIONALS.get(engine, ()))
    parser.set_defaults(**{e["dest"]: e["default"] for e in entries
                           if e["action"] != "_HelpAction" and e["default"] != argparse.SUPPRESS})
    return parser


# --- values the stand-in acts on: the engines' own converters ------------------------------------------

# SGLang (help of --context-length): SI k/M/G/T (decimals allowed) and IEC Ki/Mi/Gi/Ti, case-sensitive.
_SGLANG_UNITS = {"k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12,
                 "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
# vLLM (utils/argparse_utils.human_readable_int): lowercase decimal, uppercase binary without decimals.
_VLLM_UNITS = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12,
               "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def human_readable_int(engine, value):
    """'32k' -> 32000; '32Ki' (SGLang) / '32K' (vLLM) -> 32768; ValueError for what the engine refuses."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", value.strip())
    if not match:
        raise ValueError(value)
    number, suffix = match.groups()
    if not suffix:
        return int(number)
    units = _SGLANG_UNITS if engine == "sglang" else _VLLM_UNITS
    if suffix not in units:
        raise ValueError(value)
    decimal = suffix in ("k", "M", "G", "T") if engine == "sglang" else suffix.islower()
    if not decimal and "." in number:
        raise ValueError(value)  # both engines: no decimals with binary units
    return int(float(number) * units[suffix])


def _convert(engine, kind, value):
    if kind == "human_readable_int":
        return human_readable_int(engine, value)
    if kind == "human_readable_int_or_auto":
        return -1 if value in ("auto", "-1") else human_readable_int(engine, value)
    if kind in ("_optional_type", "nullable_str"):
        return None if value in ("", "None") else value  # vLLM _optional_type, SGLang nullable_str
    return value


def convert(engine, entries, args):
    """Convert in place the string values flag_dump accepted as-is; raise ArgvError like argparse would."""
    for entry in entries:
        value, kind = getattr(args, entry["dest"], None), entry["type"]
        if kind not in ("human_readable_int", "human_readable_int_or_auto", "_optional_type", "nullable_str"):
            continue
        try:
            if isinstance(value, list):
                value = [_convert(engine, kind, v) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str):
                value = _convert(engine, kind, value)
        except ValueError:
            raise ArgvError("argument %s: invalid %s value: %r" % ("/".join(entry["flags"]), kind, value)) from None
        setattr(args, entry["dest"], value)
    return args
