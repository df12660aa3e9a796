# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Pure logic of a verified Hugging Face snapshot directory (no network, no Ansible).

A snapshot dir is "complete" when its manifest (MANIFEST, written last and atomically) records the
resolved commit and every selected file with size and sha256, and the files on disk still match.
`expected` file lists come from the Hub's metadata (model_info(files_metadata=True)):
    {path: {"size": int, "blob_id": git blob sha1, "lfs_sha256": sha256 or None}}
LFS files are checked against the Hub's sha256; regular (small) files against their git blob id.

A manifest is also what a snapshot is *adopted* against, offline: its records (size, sha256, git blob id
per file) are the expected files (checked by size and sha256), and `adoption_plan` says what a dir (plus the files delivered into its
INCOMING dir) holds of them. A manifest vouches for the files of the dir it sits in only when it was
written on the same host (`host`): one carried over from elsewhere is a claim to check, not a record.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time

from ansible_collections.gpufleet.serving.plugins.module_utils import atomic_file

MANIFEST = ".gpufleet-snapshot.json"
# Inside the snapshot dir (same filesystem even when the dir is a mount point): each run stages into a
# STAGING.<pid>.<random> of its own (STAGING itself: the one dir all runs shared before the lock).
STAGING = ".gpufleet-partial"
LOCK = ".gpufleet-lock"
INCOMING = ".gpufleet-incoming"  # inside the snapshot dir: files delivered by a fleet transfer, to adopt
MANIFEST_FORMAT = 1
_BLOCK = 4 * 1024 * 1024
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


def file_stat(path):
    """What changes when a file is rewritten, even at the same size: mtime (unless the writer sets it
    back), ctime (no unprivileged writer can set it back: a chmod, chown or rename changes it too, and the
    next run then hashes the file once more) and the inode (a file replaced by a rename)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def stat_of(snapshot_dir, names):
    found = {}
    for rel in names:
        try:
            found[rel] = file_stat(os.path.join(snapshot_dir, rel))
        except OSError:
            pass
    return found


def _trusted(record, expected, local_path, recorded_stat):
    """The manifest vouches for a file when it recorded the same blob and the file's stat is the one
    recorded with it. A manifest written before stats were recorded has none: the size alone, as then."""
    if not record or record.get("blob_id") != expected["blob_id"] or record.get("size") != expected["size"]:
        return False
    try:
        now = file_stat(local_path)
    except OSError:
        return False
    return now["size"] == expected["size"] and recorded_stat in (None, now)


def plan(snapshot_dir, expected, commit_sha, deep=False):
    """Compare the dir with the expected files.

    Returns a dict:
      records:  {path: {size, sha256, blob_id}} for files already good on disk
      fetch:    sorted paths that must be downloaded
      stale:    paths the previous manifest owned that are no longer selected (to delete)
      complete: True when nothing is to fetch, delete or (re)record and no staging dir is left over
    Without `deep`, a file the manifest already recorded (same blob, same stat on disk: see `_trusted`)
    is trusted; every other file present is hashed. With `deep`, every file is hashed.
    """
    manifest = read_manifest(snapshot_dir) or {}
    recorded = manifest.get("files") or {}
    stats = manifest.get("stat") or {}
    records, fetch = {}, []
    for path, exp in sorted(expected.items()):
        local = os.path.join(snapshot_dir, path)
        if not deep and _trusted(recorded.get(path), exp, local, stats.get(path)):
            records[path] = recorded[path]
            continue
        sha256 = verify_file(local, exp)
        if sha256 is None:
            fetch.append(path)
        else:
            records[path] = {"size": exp["size"], "sha256": sha256, "blob_id": exp["blob_id"]}
    stale = sorted(p for p in recorded if p not in expected and os.path.lexists(os.path.join(snapshot_dir, p)))
    complete = (not fetch and not stale and manifest.get("commit_sha") == commit_sha and recorded == records
                and not staging_dirs(snapshot_dir))  # leftovers of a killed run are cleaned up
    return {"records": records, "fetch": fetch, "stale": stale, "complete": complete}


def build_manifest(repo_id, revision, commit_sha, records, allow_patterns=None, ignore_patterns=None, host=None):
    manifest = {
        "format": MANIFEST_FORMAT,
        "repo_id": repo_id,
        "revision": revision,
        "commit_sha": commit_sha,
        "allow_patterns": allow_patterns,
        "ignore_patterns": ignore_patterns,
        "bytes": sum(r["size"] for r in records.values()),
        "files": records,
    }
    if host:
        manifest["host"] = host  # where the files were verified (see adoption_plan)
    return manifest


def write_manifest(snapshot_dir, manifest):
    """Atomic write (temp file in the same dir, fsync, rename, fsync dir): a crash leaves the old state
    or the new one, never a torn manifest that could read as complete.
    Records the stat of every file as it is now (`stat`: only meaningful in this dir, on this host; other
    hosts adopting the manifest ignore it): call it once the files are verified and in place."""
    manifest = dict(manifest, stat=stat_of(snapshot_dir, manifest["files"]))
    atomic_file.write_json(os.path.join(snapshot_dir, MANIFEST), manifest, mode=0o644, indent=2)


def record_stat(snapshot_dir):
    """Re-records the stat of the manifest's files when it changed: after a chown, a touch, a re-hash
    that found the bytes still right, or in a manifest written before stats were recorded. Only right
    after the files were checked (plan), with the lock held, so that a stat recorded is a file vouched for.
    Returns True when the manifest was rewritten."""
    manifest = read_manifest(snapshot_dir)
    if not manifest or manifest.get("stat") == stat_of(snapshot_dir, manifest.get("files") or {}):
        return False
    write_manifest(snapshot_dir, manifest)
    return True


def remove_manifest(snapshot_dir):
    """Mark the dir incomplete before touching any file in it."""
    try:
        os.unlink(os.path.join(snapshot_dir, MANIFEST))
    except FileNotFoundError:
        return
    atomic_file.fsync_dir(snapshot_dir)


def move_into_place(snapshot_dir, source_dir, names, stale):
    """Move verified files from source_dir (staging or incoming) to their place, then drop the files
    of the previous snapshot that are no longer selected. Same filesystem: each move is a rename."""
    for rel in names:
        final = os.path.join(snapshot_dir, rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.replace(os.path.join(source_dir, rel), final)
    for rel in stale:
        os.unlink(os.path.join(snapshot_dir, rel))


def orphaned_partials(snapshot_dir):
    """Temp files of downloads that were killed. huggingface_hub (2.4.0) writes each download to a
    process-unique `*.incomplete` file (never resumed by a later process) and only removes it when the
    process survives, so a killed run leaves them behind: {path: size}."""
    found = {}
    for staging in staging_dirs(snapshot_dir):
        for dirpath, _dirs, names in os.walk(staging):
            for name in names:
                if name.endswith(".incomplete"):
                    path = os.path.join(dirpath, name)
                    try:
                        found[path] = os.path.getsize(path)
                    except FileNotFoundError:  # a live download finished (renamed) between listing and stat
                        pass
    return found


# -- one run at a time ------------------------------------------------------------------------------


class LockTimeout(Exception):
    def __init__(self, path, holder):
        super().__init__(path)
        self.path, self.holder = path, holder


def lock_path(snapshot_dir):
    """Next to the snapshot dir, not inside it: the lock must outlive the dir (the first run creates it,
    an operator may delete or replace it while a run waits) and a file inside would be one more file in
    every snapshot listing. A dir that is a mount point (a model volume of its own, maybe shared over NFS)
    keeps it inside: a mount point cannot be replaced, and its parent is a filesystem other hosts do not see."""
    snapshot_dir = os.path.abspath(snapshot_dir)
    if os.path.ismount(snapshot_dir):
        return os.path.join(snapshot_dir, LOCK)
    parent, name = os.path.split(snapshot_dir)
    return os.path.join(parent, "." + name + LOCK)


def lock(snapshot_dir, timeout, poll=0.2):
    """Takes the exclusive lock of a snapshot dir, waiting up to `timeout` seconds (polling), and writes
    the holder (pid, host, start time) into the lock file for the message of the next run that waits.
    Returns the open lock file descriptor: the lock lasts while it is open, and the kernel releases it when
    the process ends however it ends, so a killed run never leaves a stale lock (over NFS, Linux emulates
    flock with NFS byte-range locks, seen by every host: a dead host's lock ends with its lease).
    Raises LockTimeout (with the holder, a dict or None) or OSError (lock file not creatable)."""
    path = lock_path(snapshot_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                holder = read_holder(fd)
                os.close(fd)
                raise LockTimeout(path, holder) from None
            time.sleep(min(poll, left))
    since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "since": since}).encode(), 0)
    return fd


def read_holder(fd):
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def staging_dirs(snapshot_dir):
    """Staging dirs in the snapshot dir (this run's and those of runs that died: with the lock held, no
    other live run has one)."""
    try:
        names = os.listdir(snapshot_dir)
    except OSError:
        return []
    return sorted(os.path.join(snapshot_dir, n) for n in names
                  if (n == STAGING or n.startswith(STAGING + ".")) and os.path.isdir(os.path.join(snapshot_dir, n)))


def new_staging(snapshot_dir):
    """A staging dir of this run's own: no other run writes, moves or deletes in it."""
    return tempfile.mkdtemp(prefix="%s.%d." % (STAGING, os.getpid()), dir=snapshot_dir)


def remove_stagings(snapshot_dir, keep=None):
    for staging in staging_dirs(snapshot_dir):
        if staging != keep:
            shutil.rmtree(staging)


def resumable(snapshot_dir, expected, names):
    """Files of `names` that a run which died had completed in its staging dir, matching `expected`:
    {path: (staged file, sha256)}. They are taken instead of being downloaded again (the client itself
    only resumes within its own staging dir, and each run now has a new one)."""
    found = {}
    for staging in staging_dirs(snapshot_dir):
        for rel in names:
            if rel not in found:
                sha256 = verify_file(os.path.join(staging, rel), expected[rel])
                if sha256:
                    found[rel] = (os.path.join(staging, rel), sha256)
    return found


def escape_pattern(path):
    """An fnmatch pattern matching exactly `path` (for the client's allow_patterns)."""
    return "".join("[%s]" % c if c in "*?[" else c for c in path)


# -- offline adoption ------------------------------------------------------------------------------


def is_commit_sha(revision):
    return bool(revision and _SHA.match(revision))


def safe_relpath(rel):
    return bool(rel) and not os.path.isabs(rel) and ".." not in rel.split("/")


def manifest_problem(manifest):
    """Why `manifest` cannot be adopted against (a string), or None when its shape is sound."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return "not a gpufleet snapshot manifest (format %d)" % MANIFEST_FORMAT
    if not isinstance(manifest.get("repo_id"), str) or not is_commit_sha(manifest.get("commit_sha")):
        return "it records no repo_id or no commit sha"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "it records no files"
    for rel, record in sorted(files.items()):
        if not safe_relpath(rel):
            return "file name %r points outside the snapshot dir" % rel
        if not (isinstance(record, dict) and isinstance(record.get("size"), int) and record["size"] >= 0
                and _SHA256.match(str(record.get("sha256"))) and _SHA.match(str(record.get("blob_id")))):
            return "the record of %s has no valid size, sha256 and blob_id" % rel
    return None


def verify_record(path, record):
    """True when `path` has exactly the size and sha256 a manifest recorded. (The recorded blob id is the
    Hub's: for an LFS file, the id of its pointer, so it says nothing about the bytes on disk.)"""
    try:
        if os.path.getsize(path) != record["size"]:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == record["sha256"]


def adoption_plan(snapshot_dir, manifest, host, deep=False, delivered_dir=None):
    """What `snapshot_dir` (and its INCOMING dir, or `delivered_dir`: the files a run claimed from it, see
    `claim_incoming`) holds of the snapshot `manifest` describes.

    Returns a dict:
      take:     sorted paths delivered into INCOMING that match their record (to move into place)
      rejected: sorted paths delivered into INCOMING that do not (to delete)
      missing:  sorted paths neither INCOMING nor the dir provides verified
      wrong:    the missing paths that are on disk in the dir, proven wrong
      stale:    paths the dir's own manifest owned that `manifest` does not list (to delete)
      complete: True when the dir already is this snapshot, recorded on this host, with no INCOMING dir
    A file of the dir is trusted without hashing when the dir's manifest was written on `host` and
    recorded the same file (size, sha256, blob id) with the stat it has now (see `_trusted`: a same-size
    rewrite is hashed); `deep` hashes all.
    """
    records = manifest["files"]
    current = read_manifest(snapshot_dir) or {}
    own = current.get("host") == host
    recorded = (current.get("files") or {}) if own else {}
    stats = (current.get("stat") or {}) if own else {}
    incoming = delivered_dir or os.path.join(snapshot_dir, INCOMING)
    take, rejected, missing, wrong = [], [], [], []
    for rel, record in sorted(records.items()):
        delivered = os.path.join(incoming, rel)
        if os.path.lexists(delivered):
            if verify_record(delivered, record):
                take.append(rel)
            else:
                rejected.append(rel)
                missing.append(rel)
            continue
        local = os.path.join(snapshot_dir, rel)
        if not deep and recorded.get(rel) == record and _trusted(record, record, local, stats.get(rel)):
            continue
        if verify_record(local, record):
            continue
        missing.append(rel)
        if os.path.lexists(local):
            wrong.append(rel)
    owned = current.get("files") or {}
    stale = sorted(p for p in owned if p not in records and os.path.lexists(os.path.join(snapshot_dir, p)))
    complete = (own and not take and not missing and not stale and recorded == records
                and not os.path.lexists(os.path.join(snapshot_dir, INCOMING))  # leftovers of an interrupted
                and not staging_dirs(snapshot_dir)                              # transfer or run are cleaned up
                and (current.get("repo_id"), current.get("commit_sha")) == (manifest["repo_id"], manifest["commit_sha"]))
    return {"take": take, "rejected": rejected, "missing": missing, "wrong": wrong, "stale": stale,
            "complete": complete}


def claim_incoming(snapshot_dir, names):
    """Moves the files of `names` delivered into INCOMING into a staging dir of this run's own, and
    returns it (None when none was delivered). INCOMING is written by transfers that hold no lock (another
    playbook run's rsync may be delivering another commit's file there right now): a file is verified
    and moved into place from where no one else can replace it between the check and the move."""
    incoming, claimed = os.path.join(snapshot_dir, INCOMING), None
    for rel in names:
        if os.path.lexists(os.path.join(incoming, rel)):
            claimed = claimed or new_staging(snapshot_dir)
            os.makedirs(os.path.dirname(os.path.join(claimed, rel)), exist_ok=True)
            os.replace(os.path.join(incoming, rel), os.path.join(claimed, rel))
    return claimed


# -- one dir per snapshot, side by side under the model's home ------------------------------------
# The engine mounts the dir of its own commit, so a fetch of another commit (or another file selection)
# never writes into a dir a container reads: the files change with the host's rollout batch, not before.
# Layout: <home>/snapshots/<id>/ with <id> = the commit sha, plus "-" and a short hash of the patterns
# when allow/ignore patterns select the files (they change the files of one commit). Hosts fetched
# before this layout hold one "legacy" snapshot directly in <home> (files + MANIFEST).

SNAPSHOTS = "snapshots"


def snapshot_id(commit_sha, allow_patterns=None, ignore_patterns=None):
    """The name of a snapshot's dir: the same on every host for the same bytes, another one for any other
    commit or file selection ([] and None select the same files)."""
    allow, ignore = list(allow_patterns or []), list(ignore_patterns or [])
    if not allow and not ignore:
        return commit_sha
    digest = hashlib.sha256(json.dumps([allow, ignore]).encode("utf-8")).hexdigest()
    return "%s-%s" % (commit_sha, digest[:12])


def snapshot_path(home, commit_sha, allow_patterns=None, ignore_patterns=None):
    return os.path.join(home, SNAPSHOTS, snapshot_id(commit_sha, allow_patterns, ignore_patterns))


def home_of(snapshot_dir):
    """The model's home of a per-commit snapshot dir; None for any other dir (a legacy or flat one)."""
    parent = os.path.dirname(os.path.abspath(snapshot_dir))
    return os.path.dirname(parent) if os.path.basename(parent) == SNAPSHOTS else None


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def list_snapshots(home):
    """Every snapshot dir of a model's home, newest first: [{path, id, legacy, manifest, mtime}].
    `manifest` is None for an incomplete dir (a fetch that did not finish, or one under way); `mtime`
    is the manifest's (when the snapshot was last recorded complete), else the dir's."""
    found = []
    legacy = read_manifest(home)
    if legacy is not None:
        found.append({"path": os.path.abspath(home), "id": None, "legacy": True, "manifest": legacy,
                      "mtime": _mtime(os.path.join(home, MANIFEST))})
    root = os.path.join(home, SNAPSHOTS)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        names = []
    for name in names:
        path = os.path.abspath(os.path.join(root, name))
        if name.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue  # lock files of the snapshot dirs, anything that is not a snapshot
        manifest = read_manifest(path)
        found.append({"path": path, "id": name, "legacy": False, "manifest": manifest,
                      "mtime": _mtime(os.path.join(path, MANIFEST)) if manifest else _mtime(path)})
    return sorted(found, key=lambda s: (-s["mtime"], s["path"]))


def _selection(manifest):
    return list(manifest.get("allow_patterns") or []), list(manifest.get("ignore_patterns") or [])


def find_snapshot(home, revision, allow_patterns=None, ignore_patterns=None, repo_id=None):
    """The complete snapshot of `home` a host serves for `revision`: with a commit sha, the one of that
    commit and file selection (its dir, or a legacy snapshot in `home` recorded at it); with a branch or tag
    (which cannot be resolved offline), the newest complete one of that selection. None when there is none."""
    selection = (list(allow_patterns or []), list(ignore_patterns or []))
    for snap in list_snapshots(home):
        manifest = snap["manifest"]
        if not manifest or _selection(manifest) != selection or (repo_id and manifest.get("repo_id") != repo_id):
            continue
        if not is_commit_sha(revision):
            return snap
        if manifest.get("commit_sha") == revision and (
                snap["legacy"] or snap["id"] == snapshot_id(revision, *selection)):
            return snap
    return None


def _matches(record, wanted):
    """Whether a manifest record holds the bytes `wanted` describes: by sha256 when it is known (a manifest
    record, or an LFS file's Hub metadata), else by the git blob id (a regular file's Hub metadata)."""
    if record.get("size") != wanted.get("size"):
        return False
    sha256 = wanted.get("sha256") or wanted.get("lfs_sha256")
    if sha256:
        return record.get("sha256") == sha256
    return bool(wanted.get("blob_id")) and record.get("blob_id") == wanted["blob_id"]


def linkable(snapshot_dir, wanted, names, host, deep=False):
    """Files of `names` that another snapshot of the same home (or the legacy one in it) already holds
    with the same bytes: {path: (file to hard-link, its manifest record)}. They are linked instead of
    being downloaded or received (same filesystem; the other dir is not touched). A file is taken when
    its manifest was written on `host` and its stat is the one recorded with it, else only after it was
    hashed (a carried-in or changed file), as `deep` always does. Only complete snapshots are sources."""
    home = home_of(snapshot_dir)
    if home is None or not names:
        return {}
    found = {}
    own = os.path.abspath(snapshot_dir)
    for snap in list_snapshots(home):
        manifest = snap["manifest"]
        if not manifest or snap["path"] == own:
            continue
        trusted_host = manifest.get("host") == host
        stats = manifest.get("stat") or {}
        for rel in names:
            record = (manifest.get("files") or {}).get(rel)
            if rel in found or not isinstance(record, dict) or not _matches(record, wanted[rel]):
                continue
            source = os.path.join(snap["path"], rel)
            if not (trusted_host and not deep and stats.get(rel) is not None
                    and _trusted(record, record, source, stats[rel])) and not verify_record(source, record):
                continue
            found[rel] = (source, {"size": record["size"], "sha256": record["sha256"], "blob_id": record["blob_id"]})
    return found


def link_into(target_dir, linked):
    """Hard-links the files `linkable` found into `target_dir` (a staging dir), replacing nothing."""
    for rel, (source, _record) in sorted(linked.items()):
        dest = os.path.join(target_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.unlink(dest)
        os.link(source, dest)


# -- retention --------------------------------------------------------------------------------------


def _inside(path, root):
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def in_use(snap, mounts):
    """Whether a container (running or stopped) mounts the snapshot: a mount of its dir, of anything in it, or
    of a dir above it (a whole model store); a legacy snapshot is its home's own files, so a mount of the home
    or of a file in it (outside snapshots/)."""
    for source in mounts:
        if not source:
            continue
        if snap["legacy"]:
            if _inside(source, snap["path"]) and not _inside(source, os.path.join(snap["path"], SNAPSHOTS)):
                return True
        elif _inside(source, snap["path"]) or (_inside(snap["path"], source)  # or a mount of a dir above it,
                                               and os.path.abspath(source) != home_of(snap["path"])):
            return True  # but a mount of the home is an engine of the legacy files, which never reads snapshots/
    return False


def prune_plan(snapshots, current, keep, mounts):
    """Which snapshot dirs of a home to remove: all but the `keep` newest (`snapshots` as list_snapshots
    orders them), counting `current` (the one the engine now serves, always kept) first; a dir any
    container mounts is never removed (nor counted: it is not the operator's retention, it is in use), and a
    legacy flat snapshot that was migrated into a dir of its commit is not counted either (a duplicate).
    Returns {keep: [paths], remove: [paths], in_use: [paths]}."""
    if keep < 1:
        raise ValueError("keep must be at least 1 (the snapshot the engine serves), got %r" % (keep,))
    current = os.path.abspath(current)
    used = [s["path"] for s in snapshots if in_use(s, mounts)]
    kept = [current]
    remove = []
    # A legacy flat snapshot whose commit and selection have their own dir now was migrated: a duplicate.
    migrated = {(s["manifest"].get("commit_sha"), json.dumps(_selection(s["manifest"])))
                for s in snapshots if s["manifest"] and not s["legacy"]}
    for snap in snapshots:
        if snap["path"] == current or snap["path"] in used:
            continue
        duplicate = snap["legacy"] and (snap["manifest"].get("commit_sha"),
                                        json.dumps(_selection(snap["manifest"]))) in migrated
        if len(kept) < keep and snap["manifest"] is not None and not duplicate:
            kept.append(snap["path"])
        else:
            remove.append(snap["path"])
    return {"keep": kept, "remove": remove, "in_use": [p for p in used if p != current]}


def remove_snapshot(snap):
    """Deletes a snapshot: a per-commit dir whole; a legacy one file by file (its manifest first, so that it
    never looks complete again), leaving <home>/snapshots and anything its manifest did not record."""
    if not snap["legacy"]:
        shutil.rmtree(snap["path"])
        return
    home = snap["path"]
    remove_manifest(home)
    for rel in sorted((snap["manifest"] or {}).get("files") or {}):
        path = os.path.join(home, rel)
        if safe_relpath(rel) and os.path.lexists(path) and not _inside(path, os.path.join(home, SNAPSHOTS)):
            os.unlink(path)
            parent = os.path.dirname(path)
            while parent != home and _inside(parent, home):
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)
