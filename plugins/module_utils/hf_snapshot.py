# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Pure logic of a verified Hugging Face snapshot directory (no network, no Ansible).

A snapshot dir is "complete" when its manifest (MANIFEST, written last and atomically) records the
resolved commit and every selected file with size and sha256, and the files on disk still match.
`expected` file lists come from the Hub's metadata (model_info(files_metadata=True)):
    {path: {"size": int, "blob_id": git blob sha1, "lfs_sha256": sha256 or None}}
LFS files are checked against the Hub's sha256; regular (small) files against their git blob id.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

MANIFEST = ".gpufleet-snapshot.json"
STAGING = ".gpufleet-partial"  # inside the snapshot dir: same filesystem even when the dir is a mount point
MANIFEST_FORMAT = 1
_BLOCK = 4 * 1024 * 1024


def expected_files(siblings):
    """model_info siblings (objects with rfilename, size, blob_id, lfs) -> expected file dict."""
    return {
        s.rfilename: {"size": s.size, "blob_id": s.blob_id, "lfs_sha256": s.lfs.sha256 if s.lfs else None}
        for s in siblings
    }


def hash_file(path):
    """(sha256, git blob sha1) of a file, in one read."""
    sha256, blob = hashlib.sha256(), hashlib.sha1()
    blob.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            sha256.update(block)
            blob.update(block)
    return sha256.hexdigest(), blob.hexdigest()


def verify_file(path, expected):
    """sha256 of `path` when it matches the expected size and hash, else None."""
    try:
        if os.path.getsize(path) != expected["size"]:
            return None
        sha256, blob_id = hash_file(path)
    except OSError:
        return None
    if expected["lfs_sha256"]:
        return sha256 if sha256 == expected["lfs_sha256"] else None
    return sha256 if blob_id == expected["blob_id"] else None


def read_manifest(snapshot_dir):
    try:
        with open(os.path.join(snapshot_dir, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    return manifest


def _trusted(record, expected, local_path):
    """The manifest vouches for a file when it recorded the same blob and the size on disk still matches."""
    if not record or record.get("blob_id") != expected["blob_id"] or record.get("size") != expected["size"]:
        return False
    try:
        return os.path.getsize(local_path) == expected["size"]
    except OSError:
        return False


def plan(snapshot_dir, expected, commit_sha, deep=False):
    """Compare the dir with the expected files.

    Returns a dict:
      records:  {path: {size, sha256, blob_id}} for files already good on disk
      fetch:    sorted paths that must be downloaded
      stale:    paths the previous manifest owned that are no longer selected (to delete)
      complete: True when nothing is to fetch, delete or (re)record
    Without `deep`, a file the manifest already recorded (same blob, same size on disk) is trusted;
    every other file present is hashed. With `deep`, every file is hashed.
    """
    manifest = read_manifest(snapshot_dir) or {}
    recorded = manifest.get("files") or {}
    records, fetch = {}, []
    for path, exp in sorted(expected.items()):
        local = os.path.join(snapshot_dir, path)
        if not deep and _trusted(recorded.get(path), exp, local):
            records[path] = recorded[path]
            continue
        sha256 = verify_file(local, exp)
        if sha256 is None:
            fetch.append(path)
        else:
            records[path] = {"size": exp["size"], "sha256": sha256, "blob_id": exp["blob_id"]}
    stale = sorted(p for p in recorded if p not in expected and os.path.lexists(os.path.join(snapshot_dir, p)))
    complete = not fetch and not stale and manifest.get("commit_sha") == commit_sha and recorded == records
    return {"records": records, "fetch": fetch, "stale": stale, "complete": complete}


def build_manifest(repo_id, revision, commit_sha, records, allow_patterns=None, ignore_patterns=None):
    return {
        "format": MANIFEST_FORMAT,
        "repo_id": repo_id,
        "revision": revision,
        "commit_sha": commit_sha,
        "allow_patterns": allow_patterns,
        "ignore_patterns": ignore_patterns,
        "bytes": sum(r["size"] for r in records.values()),
        "files": records,
    }


def write_manifest(snapshot_dir, manifest):
    """Atomic write (temp file in the same dir, fsync, rename, fsync dir): a crash leaves the old state
    or the new one, never a torn manifest that could read as complete."""
    fd, tmp = tempfile.mkstemp(prefix=MANIFEST + ".", suffix=".tmp", dir=snapshot_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(snapshot_dir, MANIFEST))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(snapshot_dir)


def remove_manifest(snapshot_dir):
    """Mark the dir incomplete before touching any file in it."""
    try:
        os.unlink(os.path.join(snapshot_dir, MANIFEST))
    except FileNotFoundError:
        return
    fsync_dir(snapshot_dir)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def orphaned_partials(snapshot_dir):
    """Temp files of downloads that were killed. huggingface_hub (2.4.0) writes each download to a
    process-unique `*.incomplete` file (never resumed by a later process) and only removes it when the
    process survives, so a killed run leaves them behind: {path: size}."""
    found = {}
    for dirpath, _dirs, names in os.walk(os.path.join(snapshot_dir, STAGING)):
        for name in names:
            if name.endswith(".incomplete"):
                path = os.path.join(dirpath, name)
                found[path] = os.path.getsize(path)
    return found


def escape_pattern(path):
    """An fnmatch pattern matching exactly `path` (for the client's allow_patterns)."""
    return "".join("[%s]" % c if c in "*?[" else c for c in path)
