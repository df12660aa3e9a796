# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see LICENSE)
"""Write a JSON file so that a reader (or a crash) sees the old content or the new, never a torn file.

The state files of the collection (run lock, convergence stamp, snapshot manifest) are read by later
runs to decide what to skip; a half-written one would be read as "unreadable" or, worse, as complete.
A temporary file in the same directory is written, fsynced, given its mode, then renamed over the
target (a rename within one filesystem is atomic); the directory is fsynced so the rename survives a
power loss too.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile


def fsync_dir(path):
    """Make a rename or an unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, data, mode=0o644, indent=None):
    """Replace `path` with `data` as JSON (sorted keys, trailing newline), atomically and durably.
    `mode` is set before the rename, so the file is never visible with a wider mode."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=indent, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
