# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Filters of the model_fetch role (documentation in the sidecar .yml files)."""
from __future__ import annotations

import posixpath
import shlex

from ansible.errors import AnsibleFilterError


def _patterns(value):
    return list(value) if value else None  # [] and None select the same files


def model_snapshots(main, extras=None, root="/srv/models"):
    """The snapshots a host needs: its model first, then the extra models (draft, VL parts), each with
    every default filled in and a `key` that is the same on two hosts exactly when they need the same
    bytes (the directory may differ)."""
    snapshots = []
    for index, spec in enumerate([main] + list(extras or [])):
        where = "model_fetch_repo_id" if index == 0 else "model_fetch_extra_models[%d]" % (index - 1)
        repo_id = spec.get("repo_id")
        if not isinstance(repo_id, str) or repo_id.count("/") != 1 or "" in repo_id.split("/"):
            raise AnsibleFilterError("%s: repo_id must be 'org/name', got %r" % (where, repo_id))
        snapshot = {
            "name": spec.get("name") or repo_id.split("/")[1],
            "repo_id": repo_id,
            "revision": spec.get("revision") or "main",
            "dir": spec.get("dir") or posixpath.join(root, repo_id.replace("/", "--")),
            "allow_patterns": _patterns(spec.get("allow_patterns")),
            "ignore_patterns": _patterns(spec.get("ignore_patterns")),
        }
        snapshot["key"] = "%s@%s allow=%s ignore=%s" % (
            repo_id, snapshot["revision"], snapshot["allow_patterns"], snapshot["ignore_patterns"])
        for other in snapshots:
            if other["repo_id"] == repo_id:
                raise AnsibleFilterError("%s: %s is listed twice; one snapshot per repo" % (where, repo_id))
            if other["dir"].rstrip("/") == snapshot["dir"].rstrip("/"):
                raise AnsibleFilterError("%s: dir %s is already the dir of %s" % (where, snapshot["dir"], other["repo_id"]))
        snapshots.append(snapshot)
    return snapshots


def model_fetch_disagreement(hostvars, hosts):
    """One line per host whose `model_fetch_fleet_wants` (seed, offline, snapshot keys) differ from the
    first such host's: in fleet mode one download serves every host, so they must all want the same."""
    wants = {host: hostvars[host].get("model_fetch_fleet_wants") for host in hosts}
    fleet = [host for host in hosts if wants[host] is not None]
    return ["%s wants %s but %s wants %s" % (host, wants[host], fleet[0], wants[fleet[0]])
            for host in fleet[1:] if wants[host] != wants[fleet[0]]]


def model_fetch_fact(snapshots, results):
    """gpufleet_model, the fact the engine role reads: the model's repo_id, dir (the snapshot's own dir, the
    module's `path`: <home>/snapshots/<id> of its commit), commit_sha, bytes (the whole
    snapshot) and weights_bytes (the weight files the engines load: what the planner's fit counts), and
    the same for each extra model (with its name) under extra_models.

    A skipped fetch (fleet mode's check run before the seed's first download) has no commit dir yet: the model's
    home stands in, for check mode's plan only. Any other result without a `path` fails: an engine planned from the
    home would mount every commit at once."""
    if len(results) != len(snapshots):
        raise AnsibleFilterError("model_fetch_fact: %d snapshot(s) but %d fetch result(s)" % (len(snapshots), len(results)))
    entries = []
    for snapshot, result in zip(snapshots, results):
        if not result.get("path") and not result.get("skipped"):
            raise AnsibleFilterError("model_fetch_fact: the fetch of %s@%s returned no snapshot path (result: %s)"
                                     % (snapshot["repo_id"], snapshot["revision"], result.get("msg") or sorted(result)))
        entries.append({"name": snapshot["name"], "repo_id": snapshot["repo_id"], "dir": result.get("path") or snapshot["dir"],
                        "commit_sha": result.get("commit_sha"), "bytes": result.get("bytes"),
                        "weights_bytes": result.get("weights_bytes")})
    fact = {key: entries[0][key] for key in ("repo_id", "dir", "commit_sha", "bytes", "weights_bytes")}
    fact["extra_models"] = entries[1:]
    return fact


def rsync_only(files):
    """rsync options (quoted, as ansible.posix.synchronize joins them into a command line) that transfer
    exactly `files` (paths relative to the source dir), each in full."""
    opts = ["--include=*/"]  # descend into every dir; --prune-empty-dirs drops those left empty
    for path in files:
        if any(c in path for c in "*?["):  # rsync treats backslashes as escapes only in wildcard patterns
            path = "".join("\\" + c if c in "*?[\\" else c for c in path)
        opts.append("--include=/" + path)
    opts += ["--exclude=*", "--prune-empty-dirs", "--ignore-times", "--whole-file"]
    return [shlex.quote(opt) for opt in opts]


class FilterModule:
    def filters(self):
        return {"model_snapshots": model_snapshots, "model_fetch_disagreement": model_fetch_disagreement,
                "model_fetch_fact": model_fetch_fact, "rsync_only": rsync_only}
