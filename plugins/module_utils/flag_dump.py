# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Rebuild an engine's command-line parser from its flag dump (stdlib only).

A dump (data/engine_flags/<engine>-<version>.json) is the list of argparse actions the real
engine registers: {flags, dest, choices, default, nargs, action, type, ...}. The rebuilt parser
uses allow_abbrev=False: both engines accept unique prefixes, which silently turns a removed flag
into another one (SGLang's --enable-flashinfer), so a command line that passes here uses full
names only. Values are checked for choices, counts and int/float/JSON types; the engines' own
later validation (ranges, cross-flag rules) is not reproduced.
"""
from __future__ import annotations

import argparse
import json
import os
import re

# `vllm serve` adds its positional model outside make_arg_parser(), so the dump lacks it.
SUBCOMMAND_POSITIONALS = {"vllm": ("model_tag",)}

# Action classes that register a positive and a negative spelling (see negative_spellings).
PAIRED_ACTIONS = {"BooleanOptionalAction", "EnableDisableAction"}

_HUMAN_INT = re.compile(r"^\d+(\.\d+)?([kKMGT]i?)?$")


class ArgvError(ValueError):
    """A command line the engine's parser would reject."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):
        raise ArgvError(message)


def _negative(flag):
    return flag.startswith(("--no-", "--disable-"))


def negative_spellings(flags):
    """The spellings of a paired switch that set False: the long ones whose polarity differs
    from the first (--x/--no-x, --enable-x/--disable-x, --disable-x/--enable-x). Short aliases
    such as vLLM's -ep stand for the first spelling."""
    return [f for f in flags[1:] if f.startswith("--") and _negative(f) != _negative(flags[0])]


class _PairedAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)
        self.negatives = negative_spellings(option_strings)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.negatives)


# Named like the engines' converters: argparse puts the name in its error messages.
def human_readable_int(value):
    """SGLang: 1k, 1Ki, 25.6k; vLLM: 32k, 32K; both: plain integers."""
    if not _HUMAN_INT.match(value):
        raise ValueError(value)
    return value


def human_readable_int_or_auto(value):
    return value if value in ("auto", "-1") else human_readable_int(value)


_TYPES = {
    "int": int,
    "float": float,
    "loads": json.loads,
    "human_readable_int": human_readable_int,
    "human_readable_int_or_auto": human_readable_int_or_auto,
}


def load_dump(path):
    """Read one dump file: a list of action entries."""
    with open(path, encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError("%s: a flag dump is a JSON list of actions" % path)
    return entries


def default_dump_dir():
    """<collection root>/data/engine_flags, found from this file (plugins/module_utils/)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(root, "data", "engine_flags")


def index_dump(entries):
    """Map every option string of the dump to its entry."""
    return {flag: entry for entry in entries for flag in entry["flags"]}


def flag_kind(entry):
    """'help', 'switch' (no value, sets True), 'paired' (--x/--no-x) or 'value'."""
    action = entry["action"]
    if action == "_HelpAction":
        return "help"
    if action in PAIRED_ACTIONS:
        return "paired"
    if entry["nargs"] == 0:     # store_true and its deprecated variants
        return "switch"
    return "value"


def _add_entry(parser, entry):
    flags, kind = entry["flags"], flag_kind(entry)
    if kind == "help":
        parser.add_argument(*flags, action="help")
    elif kind == "switch":
        parser.add_argument(*flags, dest=entry["dest"], action="store_true")
    elif kind == "paired":
        parser.add_argument(*flags, dest=entry["dest"], action=_PairedAction)
    else:
        kwargs = {"dest": entry["dest"], "type": _TYPES.get(entry["type"], str)}
        if entry["nargs"] is not None:
            kwargs["nargs"] = entry["nargs"]
        choices = [c for c in entry["choices"] or () if c is not None]
        if choices:
            kwargs["choices"] = choices
        if entry["action"] == "_AppendAction":
            kwargs["action"] = "append"
        parser.add_argument(*flags, **kwargs)


def build_parser_from_dump(entries, prog, positionals=()):
    """An argparse parser equivalent to the dumped one, without prefix matching."""
    parser = _RaisingParser(prog=prog, add_help=False, allow_abbrev=False)
    for name in positionals:
        parser.add_argument(name, nargs="?")
    for entry in entries:
        _add_entry(parser, entry)
    return parser


def build_parser(engine, version, dump_dir=None):
    """The parser of `<engine>-<version>.json` from dump_dir (default: the collection's data)."""
    path = os.path.join(dump_dir or default_dump_dir(), "%s-%s.json" % (engine, version))
    return build_parser_from_dump(
        load_dump(path),
        prog="%s %s" % (engine, version),
        positionals=SUBCOMMAND_POSITIONALS.get(engine, ()),
    )


def check_argv(parser, args):
    """Parse args (without the entrypoint); raise ArgvError naming what the engine would reject."""
    return parser.parse_args(list(args))
