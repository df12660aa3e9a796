# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""The converge stamp: what a host looked like when it was last proven healthy, and whether it still does.

A successful run leaves a stamp on the host: the digest of every input of the run (inventory values,
collection content, pinned model commit), the GPU facts, and fingerprints of what the roles made
(files, model snapshot trees, engine containers). The next run compares the host against it with
one module call; a host that matches everything, and whose engines still answer their health
endpoint, skips the roles (docs/scale.md). Anything that differs names itself as a reason, and the
host takes the full path.

Plain Python; probes (file hashes, directory walks, container state, HTTP) are injected so that the
comparison is unit-tested without a host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os

SCHEMA = 1


def file_sha256(path):
    """sha256 of a file's content; None when the file does not exist."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (IOError, OSError):
        return None
    return digest.hexdigest()


def tree_signature(path):
    """sha256 over every file's relative path, size and mtime below ``path`` (no content is read, so
    a 100 GB snapshot costs one stat per file); None when the directory does not exist."""
    if not os.path.isdir(path):
        return None
    entries = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:  # vanished while walking: the signature changes, as it should
                continue
            entries.append("%s\0%d\0%d" % (os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()


def fingerprints(spec, read_file=file_sha256, read_tree=tree_signature, read_containers=None):
    """The live fingerprints of what ``spec`` names: {files: {path: sha}, trees: {path: sig},
    containers: {name: {id, image, restart_count, running} | None}}."""
    names = list(spec.get("containers") or [])
    return {
        "files": dict((p, read_file(p)) for p in spec.get("files") or []),
        "trees": dict((p, read_tree(p)) for p in spec.get("trees") or []),
        "containers": read_containers(names) if names else {},
    }


def build(digest, gpu, spec, live, facts, now):
    """The stamp a successful run writes."""
    return {
        "schema": SCHEMA,
        "digest": digest,
        "recorded_at": int(now),
        "gpu": gpu,
        "spec": {"files": list(spec.get("files") or []), "trees": list(spec.get("trees") or []),
                 "containers": list(spec.get("containers") or []), "health": list(spec.get("health") or [])},
        "live": live,
        "facts": facts,
    }


# What a stamp says about the host. Its time and its kept facts (reports: the last health
# measurement, say) are bookkeeping: they differ from run to run on a host that did not change.
STATE_KEYS = ("schema", "digest", "gpu", "spec", "live")


def same_state(old, new):
    """Two stamps say the same about the host."""
    if not isinstance(old, dict):
        return False
    return all(canonical(old.get(k)) == canonical(new.get(k)) for k in STATE_KEYS)


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _changed_keys(old, new):
    keys = sorted(set(old or {}) | set(new or {}))
    return ["%s %s -> %s" % (k, (old or {}).get(k), (new or {}).get(k)) for k in keys
            if canonical((old or {}).get(k)) != canonical((new or {}).get(k))]


def _container_reasons(old, new):
    reasons = []
    for name in sorted(set(old) | set(new)):
        was, now = old.get(name), new.get(name)
        if now is None:
            reasons.append("container %s is gone" % name)
        elif not now.get("running"):
            reasons.append("container %s is not running" % name)
        elif was is None or now.get("id") != was.get("id"):
            reasons.append("container %s was replaced outside this collection" % name)
        elif now.get("image") != was.get("image"):
            reasons.append("container %s runs another image" % name)
        elif now.get("restart_count") != was.get("restart_count"):
            reasons.append("container %s restarted %s times since the last run"
                           % (name, (now.get("restart_count") or 0) - (was.get("restart_count") or 0)))
    return reasons


def stamp_reasons(stamp, digest, gpu, now, max_age):
    """Why the stamp alone says the host needs the full run ([] when it does not). Cheap checks
    only: nothing on the host but the stamp and the GPU facts is read."""
    if stamp is None:
        return ["no converge stamp (first run of this collection on the host)"]
    if not isinstance(stamp, dict) or stamp.get("schema") != SCHEMA:
        return ["converge stamp of another format"]
    reasons = []
    if stamp.get("digest") != digest:
        reasons.append("inputs changed (inventory values, collection content or pinned model commit)")
    age = now - int(stamp.get("recorded_at") or 0)
    if max_age and age > max_age:
        reasons.append("last full verification %d s ago, more than max_age=%d s" % (age, max_age))
    if canonical(stamp.get("gpu")) != canonical(gpu):
        changed = _changed_keys(stamp.get("gpu"), gpu)
        reasons.append("GPU facts changed: %s" % "; ".join(changed[:4]))
    return reasons


def live_reasons(stamp, live):
    """Why the host's live fingerprints differ from the stamped ones ([] when they match)."""
    old = stamp.get("live") or {}
    reasons = []
    for kind, label in (("files", "file"), ("trees", "model snapshot")):
        for path in sorted(set(old.get(kind) or {}) | set(live.get(kind) or {})):
            was, now = (old.get(kind) or {}).get(path), (live.get(kind) or {}).get(path)
            if was != now:
                reasons.append("%s %s %s" % (label, path, "is missing" if now is None else "changed"))
    reasons.extend(_container_reasons(old.get("containers") or {}, live.get("containers") or {}))
    return reasons


def health_reasons(urls, probe):
    """``probe(url) -> (ok, description)`` for each engine health URL; the failures as reasons."""
    reasons = []
    for url in urls:
        ok, description = probe(url)
        if not ok:
            reasons.append("engine %s is not healthy: %s" % (url, description))
    return reasons
