# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""The inputs of a run, read off the roles' own argument specs (controller side, plain Python).

Every role documents its inventory variables in meta/argument_specs.yml, so that file is also the
list of what can change a host: the digest of those values (as this host sees them) and of the
collection's own content is what the converge stamp compares (docs/scale.md).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import hashlib
import json
import os

import yaml

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What the collection runs: a change in any of these files can change what a run does to a host.
CONTENT_PATHS = ("roles", "plugins", "data", "playbooks", "site.yml")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def role_specs(role, root=COLLECTION_ROOT):
    """{entry point: options} of a role of this collection."""
    with open(os.path.join(root, "roles", role, "meta", "argument_specs.yml")) as handle:
        specs = yaml.load(handle, Loader=_LOADER)["argument_specs"]
    return dict((entry, spec.get("options") or {}) for entry, spec in specs.items())


def input_names(roles, root=COLLECTION_ROOT):
    """Every variable any entry point of the roles takes, sorted."""
    names = set()
    for role in roles:
        for options in role_specs(role, root).values():
            names.update(options)
    return sorted(names)


@functools.lru_cache(maxsize=None)
def content_fingerprint(root=COLLECTION_ROOT):
    """sha256 over the paths and contents of the collection's runnable files (compiled caches aside)."""
    digest = hashlib.sha256()
    for top in CONTENT_PATHS:
        base = os.path.join(root, top)
        paths = [base] if os.path.isfile(base) else sorted(
            os.path.join(d, f) for d, dirs, files in os.walk(base) for f in files
            if "__pycache__" not in d and not f.endswith((".pyc", ".pyo")))
        for path in paths:
            with open(path, "rb") as handle:
                content = handle.read()
            digest.update(os.path.relpath(path, root).encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def inputs_digest(values, fingerprint):
    """One sha256 for the inventory values of a host and the collection content. Secret values
    count through the digest only, which cannot be turned back into them."""
    canonical = json.dumps({"collection": fingerprint, "values": values}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def error_message(host, role, errors):
    return ("Host %s: inventory input for role %s is invalid: %s. Fix the variable in the inventory "
            "(group_vars/host_vars); the role's meta/argument_specs.yml lists the allowed values. "
            "Nothing was changed." % (host, role, "; ".join(errors)))
