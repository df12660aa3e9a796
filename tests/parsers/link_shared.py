#!/usr/bin/env python3
"""Hard-link torch and triton from .venv-parsers into a new per-version parser venv.

Usage: link_shared.py BASE_VENV NEW_VENV REQUIREMENTS   (setup_venv.sh calls it; any python)

Both are ~1.6 GB of the ~2-2.6 GB each parser venv holds and every venv pins the same builds, so
unpacking them again is most of a per-version venv's build time. A distribution is linked only
when the requirements file pins exactly the version installed in BASE_VENV; the files come from
its RECORD (what pip installed; --no-compile, so no .pyc), and pip then finds the distribution
installed and skips it. Anything unexpected (another filesystem, a missing file) undoes that
distribution's links and leaves it to pip. Prints what it linked.
"""
from __future__ import annotations

import csv
import glob
import os
import re
import sys

SHARED = ("torch", "triton")


def _site(venv):
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
    return found[0] if found else None


def _pins(requirements):
    pins = {}
    with open(requirements, encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)==(\S+)", line)
            if match:
                pins[match.group(1).lower()] = match.group(2)
    return pins


def link(base, new, requirements):
    base_site, new_site = _site(base), _site(new)
    if not base_site or not new_site:
        return []
    pins = _pins(requirements)
    linked = []
    for dist in SHARED:
        infos = glob.glob(os.path.join(base_site, "%s-*.dist-info" % dist))
        if len(infos) != 1 or dist not in pins:
            continue
        installed = os.path.basename(infos[0])[len(dist) + 1:-len(".dist-info")]
        if installed.split("+")[0] != pins[dist].split("+")[0]:
            continue
        with open(os.path.join(infos[0], "RECORD"), encoding="utf-8") as handle:
            paths = [row[0] for row in csv.reader(handle) if row]
        done = []
        try:
            for path in paths:
                src = os.path.normpath(os.path.join(base_site, path))
                dst = os.path.normpath(os.path.join(new_site, path))
                if not src.startswith(base_site + os.sep):
                    continue        # console scripts under bin/: pip's wrappers name the venv's python
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.link(src, dst)
                done.append(dst)
        except OSError as exc:
            for dst in done:
                os.unlink(dst)
            print("link_shared: %s not linked (%s); pip installs it" % (dist, exc))
            continue
        linked.append("%s %s (%d files)" % (dist, installed, len(done)))
    return linked


if __name__ == "__main__":
    result = link(*sys.argv[1:4])
    print("link_shared: linked %s from %s" % (", ".join(result) or "nothing", sys.argv[1]))
