#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
module: hf_model

short_description: Fetch a pinned, verified Hugging Face model snapshot into a directory

version_added: 0.1.0

description:
  - Resolves O(revision) (branch, tag or commit sha) of a Hugging Face model repo to a commit sha and makes
    O(path) hold the selected files of that commit, verified against the Hub's metadata (size, and sha256
    for LFS files or the git blob id for regular files).
  - Completion is recorded in C(.gpufleet-snapshot.json) inside O(path), written last and atomically. A
    directory without it, or whose files no longer match it, is never treated as complete.
  - When O(path) is already complete for the resolved commit, the module sends exactly one metadata request
    and downloads nothing.
  - Files are downloaded with the C(huggingface_hub) client into a staging dir of the run's own inside
    O(path) (C(.gpufleet-partial.<pid>.<random>/)), verified, then moved into place. An interrupted
    download leaves no manifest; the next run takes the files the dead run had completed (verified again),
    deletes the partial ones (the client cannot resume them across processes) and completes.
  - One run at a time per O(path). A run that writes holds an exclusive lock (C(flock)) on
    C(.<name>.gpufleet-lock) next to O(path) (inside O(path) when it is a mount point) from reading
    O(path) to writing its manifest, for O(state=present) and O(state=adopted). Another run waits up to
    O(lock_timeout) seconds, then fails naming the run that holds it (pid, host, start time). This covers
    two playbook runs at once, the fleet's controller cache, and hosts sharing an NFS model store (Linux
    locks over NFS). The kernel releases the lock when its process ends, however it ends.
  - Without O(verify), a recorded file is trusted while its size, mtime, ctime and inode are those the
    manifest recorded; a file whose stat changed is hashed again (and fetched again when wrong), so a
    same-size rewrite is caught without hashing every file. A manifest written before stats were recorded
    is trusted by size, and gets them recorded.
  - Files of the previous snapshot that are no longer selected are removed. Files the module never
    recorded are left alone.
  - The module only ever contacts O(endpoint) (client telemetry is switched off).
  - O(state=adopted) contacts no endpoint at all and does not need C(huggingface_hub). It verifies O(path)
    against a snapshot manifest (O(manifest), or the C(.gpufleet-snapshot.json) already in O(path)), taking
    the files that were delivered into C(.gpufleet-incoming/) inside O(path) (for example by
    M(ansible.posix.synchronize) from a host that fetched the snapshot once for the fleet), and records
    the snapshot as its own. It is how a fleet shares one download and how an air-gapped site adopts a
    snapshot that was carried in.
  - With O(snapshots=true), O(path) is the model's home and each snapshot gets a dir of its own,
    C(<path>/snapshots/<commit sha>) (plus C(-<hash of the patterns>) when O(allow_patterns) or
    O(ignore_patterns) select the files), so a fetch of another commit never writes into a dir an engine mounts.
    Files another snapshot of the same home already holds (a previous commit, or the flat snapshot of a
    host fetched before this layout) are hard-linked, not downloaded or received (RV(linked_files)); a
    file is linked only when that snapshot's manifest, written on this host, recorded it with the stat it
    has, or after it was hashed.
  - O(state=inspected) reads, offline, the complete snapshot of the home O(path) that O(revision) names
    (the pinned commit's dir; the newest of that file selection for a branch or tag) and fails naming the
    fix when there is none. O(state=pruned) removes, from the home of the snapshot dir O(path) (the one
    the engine serves), the snapshot dirs beyond the O(keep) newest and not in O(mounts).

extends_documentation_fragment:
  - ansible.builtin.action_common_attributes

attributes:
  check_mode:
    support: full
    details:
      - Sends the one metadata request and reports the files and bytes that would be downloaded.
      - Takes no lock and writes nothing, not even the lock file. While another run is writing O(path), the
        report may be out of date; the real run plans again under the lock.
      - With O(state=adopted), reports in RV(missing_files) what O(path) lacks of the snapshot, without
        failing on it (what a transfer has to deliver).
  diff_mode:
    support: none
  idempotent:
    support: full
    description: When the state is already as requested, a second run changes nothing and downloads nothing.
  platform:
    platforms: posix

options:
  repo_id:
    description:
      - Model repo on the Hub, V(org/name).
    type: str
    required: true
  revision:
    description:
      - Branch, tag or full commit sha. It is resolved to a commit sha, returned as RV(commit_sha).
      - Pin a commit sha in production so that every host gets the same bytes.
    type: str
    default: main
  path:
    description:
      - Local snapshot directory, for example V(/srv/models/qwen2-7b). Created when missing.
      - Required when O(state=present) or O(state=adopted).
    type: path
  state:
    description:
      - V(present) makes O(path) hold the verified snapshot.
      - V(resolved) only resolves O(revision) to a commit sha and sizes the selected files (one metadata
        request, nothing written). The preflight role uses it once per fleet so that every host fetches
        the same commit even when a branch moves during a rollout.
      - V(adopted) makes O(path) hold the snapshot O(manifest) describes, offline. Files delivered into
        C(.gpufleet-incoming/) inside O(path) and files already in O(path) are verified (size and sha256)
        against the manifest, delivered ones are moved into place, and O(path) gets its own
        manifest. A file that does not match is never recorded. The module fails naming it, deletes it
        when it was delivered (so the next transfer sends it again), and removes the manifest of O(path)
        when O(path) holds it wrong. O(revision) must be the full commit sha the manifest records
        (nothing can be resolved offline); O(endpoint) and O(token) are not used.
      - V(inspected) returns the snapshot of the home O(path) for O(revision), offline, changing nothing.
      - V(pruned) removes old snapshot dirs beside O(path) (see O(keep), O(mounts)).
    type: str
    choices: [present, resolved, adopted, inspected, pruned]
    default: present
  snapshots:
    description:
      - With O(state=present) or O(state=adopted), O(path) is the model's home and the snapshot goes into
        C(<path>/snapshots/<id>), RV(path), named by the commit sha plus C(-) and 12 hex digits of the patterns'
        hash when they select the files. Role C(model_fetch) sets it.
    type: bool
    default: false
  keep:
    description:
      - With O(state=pruned), how many snapshot dirs of the home to keep, O(path) counted first, then the
        newest complete ones (inventory variable C(model_fetch_keep_snapshots)). At least 1.
    type: int
    default: 2
  mounts:
    description:
      - With O(state=pruned), the host paths the containers mount (running or stopped). A snapshot dir that
        is one of them, is in one, or holds one is never removed, nor counted in O(keep).
    type: list
    elements: str
  manifest:
    description:
      - With O(state=adopted), the snapshot to adopt, the content of a C(.gpufleet-snapshot.json) as
        returned in RV(manifest) by the module that fetched the snapshot (usually once for the fleet).
      - Default, the C(.gpufleet-snapshot.json) in O(path) (a snapshot carried in with its manifest). A
        manifest written on another host vouches for nothing, so every file is hashed once before the
        snapshot is recorded as this host's.
    type: dict
  allow_patterns:
    description:
      - Only files matching at least one of these glob patterns are fetched (same semantics as
        C(huggingface_hub.snapshot_download)).
    type: list
    elements: str
  ignore_patterns:
    description:
      - Files matching any of these glob patterns are not fetched.
      - With O(state=adopted), O(allow_patterns) and O(ignore_patterns), when given, must be those the
        manifest records (the file list comes from the manifest).
    type: list
    elements: str
  endpoint:
    description:
      - Base URL of the Hub or of a Hub-compatible mirror (what C(HF_ENDPOINT) would be).
    type: str
    default: https://huggingface.co
  timeout:
    description:
      - Seconds any one call to O(endpoint) may go without an answer (connecting, the metadata, a file
        listing, each read of a download). A server that accepts the connection and never answers fails
        the task after this long, with a message naming the server and the timeout, instead of hanging
        the run. Inventory variable C(model_fetch_hub_timeout).
    type: float
    default: 60
  token:
    description:
      - Hugging Face access token, needed for gated and private repos. Inventory variable
        C(model_fetch_hf_token) in the C(model_fetch) role.
      - Handed to the client in-process only (never a command line, environment or file).
      - When unset, no token is sent; a token in C(HF_TOKEN) or a cached login on the host is deliberately
        not used, so the inventory stays the only source of credentials.
    type: str
  verify:
    description:
      - Re-hash every file even when the manifest says the snapshot is complete. Corrupted files are
        fetched again.
      - Without it, files recorded in the manifest are trusted when their stat (size, mtime, ctime, inode)
        is unchanged; with O(state=adopted), when their size is.
      - With O(state=adopted), files of O(path) are re-hashed (delivered files always are).
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another run that holds the lock of O(path) (see the description), polling; then
        the task fails naming that run (pid, host, start time). V(0) fails at once.
      - Inventory variable C(model_fetch_lock_timeout).
    type: float
    default: 600
  min_free_bytes:
    description:
      - Bytes that must remain free on the filesystem of O(path) after the download. The module fails
        before downloading anything when free space minus the bytes to download is below this.
    type: int
    default: 0
  owner:
    description:
      - Owner of O(path) and of every snapshot file.
    type: str
  group:
    description:
      - Group of O(path) and of every snapshot file.
    type: str
  mode:
    description:
      - Mode of the directory O(path) (files keep the client's default mode).
    type: raw

requirements:
  - huggingface_hub (tested with 2.4.0) on the managed host

notes:
  - Sizes and hashes come from O(endpoint). A mirror that lies about both cannot be detected.
  - Concurrent runs on one O(path) are serialised by a lock (see the description). A fleet transfer into
    C(.gpufleet-incoming/) holds no lock. O(state=adopted) therefore moves the delivered files into a dir of its
    own before checking them, and a file another run delivers meanwhile is never recorded unchecked.

author:
  - gpufleet maintainers (@gpufleet)
"""

EXAMPLES = r"""
---
- name: Fetch a pinned model
  gpufleet.serving.hf_model:
    repo_id: Qwen/Qwen2.5-7B-Instruct
    revision: a09a35458c702b33eeacc393d103063234e8bc28
    path: /srv/models/qwen2.5-7b-instruct
    allow_patterns: ["*.json", "*.safetensors", "tokenizer*"]
    min_free_bytes: "{{ 20 * 1024**3 }}"
    owner: root
    group: root
    mode: "0755"

- name: Fetch a gated model from the lab mirror
  gpufleet.serving.hf_model:
    repo_id: gpufleet/tiny-qwen2-gated
    revision: main
    path: /srv/models/tiny-qwen2-gated
    endpoint: http://172.28.10.1:8090
    token: "{{ model_fetch_hf_token }}"

- name: Adopt a snapshot carried into an air-gapped site, with its .gpufleet-snapshot.json (no network)
  gpufleet.serving.hf_model:
    repo_id: gpufleet/tiny-qwen2
    revision: 0bd5fd24e3dc83924a8c235f3824371e3a6896e9
    path: /srv/models/tiny-qwen2
    state: adopted

- name: Re-hash everything (after a disk incident)
  gpufleet.serving.hf_model:
    repo_id: gpufleet/tiny-qwen2
    revision: v1.0
    path: /srv/models/tiny-qwen2
    verify: true
"""

RETURN = r"""
path:
  description: The snapshot directory (with O(snapshots=true), the commit's own dir under the home).
  returned: when O(state=present), O(state=adopted) or O(state=inspected)
  type: str
  sample: /srv/models/tiny-qwen2
commit_sha:
  description: The commit sha O(revision) resolved to.
  returned: always
  type: str
  sample: 38f9117fe9090e70c2089b9fa8c25e5f960fb1fd
revision:
  description: The revision as requested.
  returned: always
  type: str
  sample: v1.0
bytes:
  description: Total size of the selected files.
  returned: always
  type: int
  sample: 3476000
weights_bytes:
  description:
    - Size of the weight files the engines load - top-level safetensors (only those the
      C(model.safetensors.index.json) names, when there is one), else C(*.bin), else C(*.pt); never
      C(original/*.pth) or other copies. V(null) when the snapshot has none.
    - With O(state=resolved), from the hub's file sizes and the safetensors index at RV(commit_sha).
  returned: always
  type: int
  sample: 3454840
files:
  description: Number of selected files.
  returned: always
  type: int
  sample: 7
config:
  description:
    - The model's C(config.json) at RV(commit_sha), parsed. The preflight role plans every host's launch
      from it before any host changes. V(null) when the files selected include no C(config.json), or the
      repo is gated and no O(token) is given.
  returned: when O(state=resolved)
  type: dict
  sample:
    architectures: [Qwen2ForCausalLM]
    hidden_size: 896
    num_attention_heads: 14
gated:
  description: Whether the repo is gated (needs a token).
  returned: when O(state=resolved)
  type: bool
  sample: false
downloaded_files:
  description:
    - Files this run downloaded from O(endpoint) (in check mode, the files that would be). Files taken
      from an interrupted run's staging dir are in RV(resumed_files), not here.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [model.safetensors]
downloaded_bytes:
  description:
    - Bytes this run downloaded from O(endpoint), the size of RV(downloaded_files) (in check mode, the
      bytes that would be). Resumed files are not counted.
  returned: when O(state=present)
  type: int
  sample: 3454840
resumed_files:
  description:
    - Files an interrupted run had completed in its staging dir, verified again and taken from there
      instead of being downloaded (in check mode, the files that would be).
  returned: when O(state=present)
  type: list
  elements: str
  sample: [config.json, tokenizer.json]
linked_files:
  description:
    - Files hard-linked from another snapshot of the same home instead of being downloaded or received
      (O(snapshots=true); in check mode, the files that would be).
  returned: when O(state=present) or O(state=adopted)
  type: list
  elements: str
  sample: [model.safetensors]
home:
  description: The model's home.
  returned: when O(state=inspected) or O(state=pruned)
  type: str
  sample: /srv/models/gpufleet--tiny-qwen2
removed:
  description: The snapshot dirs removed (in check mode, that would be).
  returned: when O(state=pruned)
  type: list
  elements: str
kept:
  description: The snapshot dirs kept by O(keep), O(path) first.
  returned: when O(state=pruned)
  type: list
  elements: str
in_use:
  description: Other snapshot dirs kept because a container mounts them.
  returned: when O(state=pruned)
  type: list
  elements: str
skipped:
  description: Snapshot dirs to remove that another run holds the lock of (left for the next run).
  returned: when O(state=pruned)
  type: list
  elements: str
received_files:
  description: Delivered files (in C(.gpufleet-incoming/)) that this run verified and moved into place.
  returned: when O(state=adopted)
  type: list
  elements: str
  sample: [model.safetensors]
received_bytes:
  description: Size of RV(received_files).
  returned: when O(state=adopted)
  type: int
  sample: 3454840
missing_files:
  description:
    - Files of the snapshot that O(path) lacks or holds wrong and that were not delivered. In check mode,
      what a transfer has to deliver; otherwise the module fails when any is missing.
  returned: when O(state=adopted)
  type: list
  elements: str
  sample: [config.json]
manifest:
  description:
    - The snapshot manifest recorded in O(path) (C(.gpufleet-snapshot.json)), with repo_id, commit_sha, and
      size, sha256 and git blob id per file. Pass it as O(manifest) to adopt the same snapshot elsewhere.
    - Its C(stat) (size, mtime_ns, ctime_ns, ino per file) describes the files of O(path) on this host
      only; hosts adopting the manifest ignore it.
    - V(null) in check mode before the snapshot was ever fetched.
  returned: when O(state=present) or O(state=adopted)
  type: dict
"""

import json
import os
import platform
import shutil
import tempfile
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot, weight_files

try:
    from huggingface_hub import (
        HfApi, constants as hf_constants, file_download as hf_file_download, hf_hub_download, snapshot_download,
    )
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import disable_progress_bars, filter_repo_objects
    from huggingface_hub.utils._http import default_client_factory, set_client_factory
    from httpx2 import Timeout as HttpTimeout, TimeoutException
except ImportError:
    HF_IMPORT_ERROR = traceback.format_exc()
else:
    HF_IMPORT_ERROR = None

LIBRARY = "gpufleet.serving"
TOKEN_HINT = "set the module option 'token' (inventory variable model_fetch_hf_token)"


def telling_cause(err):
    """The error that says what happened: huggingface_hub reports a failed file download as "check your
    connection" (LocalEntryNotFoundError) with the HTTP error or the timeout as its cause."""
    seen = err
    while seen is not None:
        if isinstance(seen, (HfHubHTTPError, TimeoutException)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


def bound_every_call(seconds):
    """The client's default has no timeout: a server that accepts and never answers would hang the run.
    Every request of huggingface_hub (metadata, listings, each read of a download) gets `seconds`."""
    hf_constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
    hf_constants.HF_HUB_ETAG_TIMEOUT = seconds
    # A file's metadata call, when it fails, is retried (5 times, backing off 1-8 s) with this module
    # constant of 60 s as its timeout (huggingface_hub 2.4 file_download.py): bounded by `seconds` too.
    hf_file_download._ETAG_RETRY_TIMEOUT = seconds

    def bounded_client():
        client = default_client_factory()
        client.timeout = HttpTimeout(seconds)
        return client
    set_client_factory(bounded_client)


class HfModel:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.repo_id, self.revision, self.path = p["repo_id"], p["revision"], p["path"]
        self.endpoint = p["endpoint"].rstrip("/")
        self.token = p["token"] or False  # False: never fall back to HF_TOKEN / cached logins
        self.timeout = p["timeout"]

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, repo_id=self.repo_id, revision=self.revision, path=self.path, **extra)

    def describe(self, err):
        err = telling_cause(err)
        where = f"{self.repo_id}@{self.revision} on {self.endpoint}"
        if isinstance(err, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
            if self.token:
                return f"{where}: gated repo, and the token was not granted access to it"
            return f"{where}: gated repo, a token with access is required: {TOKEN_HINT}"
        if isinstance(err, RevisionNotFoundError):
            return f"{where}: revision '{self.revision}' not found (no such branch, tag or commit)"
        if isinstance(err, RepositoryNotFoundError):
            return f"{where}: repository '{self.repo_id}' not found (or private, without access for this token)"
        if isinstance(err, TimeoutException):
            return (f"{where}: {self.endpoint} did not answer within {self.timeout:g} s (timeout; raise "
                    "model_fetch_hub_timeout for a slow mirror, or fix the server)")
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            status = err.response.status_code
            if status == 401:
                return f"{where}: the token was rejected (401 invalid credentials): {TOKEN_HINT} to a valid token"
            if status == 403:
                return f"{where}: the token has no access (403 forbidden)"
            return f"{where}: HTTP {status} from the server for {err.response.request.url.path}"
        return f"{where}: {type(err).__name__}: {err}"

    def metadata(self):
        api = HfApi(endpoint=self.endpoint, token=self.token, library_name=LIBRARY)
        try:
            info = api.model_info(self.repo_id, revision=self.revision, files_metadata=True, timeout=self.timeout)
        except Exception as err:  # every client error becomes one clear message
            self.fail(self.describe(err), details=str(err))
        if not info.sha or info.siblings is None or any(s.size is None or s.blob_id is None for s in info.siblings):
            self.fail(f"{self.endpoint} returned no commit sha or no file sizes/ids for {self.repo_id}: "
                      "is it a Hugging Face Hub-compatible endpoint?")
        return info

    def select(self, info):
        p = self.module.params
        names = set(filter_repo_objects([s.rfilename for s in info.siblings],
                                        allow_patterns=p["allow_patterns"], ignore_patterns=p["ignore_patterns"]))
        if not names:
            self.fail(f"allow_patterns/ignore_patterns select none of the {len(info.siblings)} files of "
                      f"{self.repo_id}@{info.sha}")
        unsafe = [n for n in names if not hf_snapshot.safe_relpath(n)]
        if unsafe:
            self.fail(f"{self.endpoint} listed file names outside the snapshot dir: {unsafe}")
        return {n: e for n, e in hf_snapshot.expected_files(info.siblings).items() if n in names}

    def planning_files(self, sha, expected, gated):
        """config.json and the safetensors index at `sha`, parsed (None when not selected or the repo is
        gated without a token): preflight plans every host from them before any host changes. Read
        into a temporary dir that is removed at once; the host's shared HF cache is never touched."""
        wanted = [name for name in ("config.json", weight_files.INDEX) if name in expected]
        if not wanted or (gated and not self.token):
            return None, None
        parsed = {}
        with tempfile.TemporaryDirectory(prefix="gpufleet-plan-") as scratch:
            for name in wanted:
                try:
                    path = hf_hub_download(
                        self.repo_id, name, revision=sha, local_dir=scratch,
                        cache_dir=os.path.join(scratch, ".hf-cache"), endpoint=self.endpoint,
                        token=self.token, library_name=LIBRARY, etag_timeout=self.timeout)
                    with open(path, encoding="utf-8") as handle:
                        parsed[name] = json.load(handle)
                except ValueError as err:
                    self.fail(f"{self.repo_id}@{sha}: {name} is not valid JSON: {err}")
                except Exception as err:  # every client error becomes one clear message
                    self.fail(self.describe(err), details=str(err))
        return parsed.get("config.json"), parsed.get(weight_files.INDEX)

    def check_disk(self, needed):
        probe = self.path
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        # Leftovers of a killed run are deleted before downloading: their space counts as free.
        free = shutil.disk_usage(probe).free + sum(hf_snapshot.orphaned_partials(self.path).values())
        reserve = self.module.params["min_free_bytes"]
        if free - needed < reserve:
            self.fail(f"not enough disk space for {self.path}: {needed} bytes to download and min_free_bytes "
                      f"{reserve} to keep free, but only {free} bytes free on the filesystem of {probe}",
                      free_bytes=free, needed_bytes=needed)

    def download(self, sha, staging, files):
        try:
            snapshot_download(
                self.repo_id, revision=sha, local_dir=staging,
                allow_patterns=[hf_snapshot.escape_pattern(f) for f in files],  # exactly the files to fetch
                cache_dir=os.path.join(staging, ".hf-cache"),  # never read or write the host's shared HF cache
                endpoint=self.endpoint, token=self.token, library_name=LIBRARY, etag_timeout=self.timeout,
            )
        except Exception as err:  # completed files stay staged; the next run verifies and keeps them
            self.fail(self.describe(err), details=str(err))

    def prepare(self):
        try:
            os.makedirs(self.path, exist_ok=True)
            return hf_snapshot.new_staging(self.path)
        except OSError as err:
            self.fail(f"path {self.path} is not writable: {err}")

    def apply(self, sha, expected, state, resumed, download, linked):
        staging = self.prepare()
        hf_snapshot.remove_manifest(self.path)  # from here on the dir must not look complete
        records = dict(state["records"])
        hf_snapshot.link_into(staging, linked)
        records.update({rel: record for rel, (_source, record) in linked.items()})
        for rel, (staged, sha256) in resumed.items():  # verified in a dead run's staging dir (we hold the lock)
            os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
            os.replace(staged, os.path.join(staging, rel))
            records[rel] = {"size": expected[rel]["size"], "sha256": sha256, "blob_id": expected[rel]["blob_id"]}
        hf_snapshot.remove_stagings(self.path, keep=staging)  # dead runs' partials: their space counts as free
        if download:
            self.download(sha, staging, download)
        for rel in download:
            staged = os.path.join(staging, rel)
            sha256 = hf_snapshot.verify_file(staged, expected[rel])
            if sha256 is None:
                if os.path.exists(staged):
                    os.unlink(staged)  # fetched again next run instead of being trusted
                self.fail(f"{rel} from {self.endpoint} does not match the size/hash the Hub lists for "
                          f"{self.repo_id}@{sha}")
            records[rel] = {"size": expected[rel]["size"], "sha256": sha256, "blob_id": expected[rel]["blob_id"]}
        hf_snapshot.move_into_place(self.path, staging, state["fetch"], state["stale"])
        shutil.rmtree(staging)
        p = self.module.params
        hf_snapshot.write_manifest(self.path, hf_snapshot.build_manifest(
            self.repo_id, self.revision, sha, records, p["allow_patterns"], p["ignore_patterns"],
            host=platform.node()))

    def run(self):
        info = self.metadata()
        sha = info.sha
        expected = self.select(info)
        p = self.module.params
        if p["snapshots"] and p["state"] == "present":  # path is the model's home: this commit's own dir
            self.path = hf_snapshot.snapshot_path(self.path, sha, p["allow_patterns"], p["ignore_patterns"])
        if self.module.params["state"] == "resolved":
            config, index = self.planning_files(sha, expected, info.gated)
            self.module.exit_json(changed=False, commit_sha=sha, revision=self.revision, gated=bool(info.gated),
                                  bytes=sum(e["size"] for e in expected.values()), files=len(expected),
                                  config=config,
                                  weights_bytes=weight_files.weights_bytes(
                                      {rel: f["size"] for rel, f in expected.items()}, index))
        # Everything from reading the dir to writing its manifest is one locked step (check mode writes
        # nothing, not even the lock file, and takes no lock: its report may be out of date when another
        # run is writing, and the real run plans again under the lock).
        if not self.module.check_mode:
            lock_or_fail(self.module, self.path, self.fail)
        state = hf_snapshot.plan(self.path, expected, sha, deep=self.module.params["verify"])
        resumed = hf_snapshot.resumable(self.path, expected, state["fetch"])
        # Files another snapshot of this home holds (the previous commit, a legacy flat dir) are hard-linked.
        linked = hf_snapshot.linkable(self.path, expected, [r for r in state["fetch"] if r not in resumed],
                                      platform.node(), deep=self.module.params["verify"])
        download = [rel for rel in state["fetch"] if rel not in resumed and rel not in linked]
        download_bytes = sum(expected[rel]["size"] for rel in download)
        if download and info.gated and not self.token:
            self.fail(f"{self.repo_id} is a gated repo and {len(download)} file(s) must be downloaded: "
                      f"{TOKEN_HINT}")
        if download_bytes:
            self.check_disk(download_bytes)
        changed = not state["complete"]
        if changed and not self.module.check_mode:
            try:
                self.apply(sha, expected, state, resumed, download, linked)
            except OSError as err:
                self.fail(f"writing the snapshot into {self.path} failed: {err}")
        changed = set_attributes(self.module, self.path, expected, changed)
        if not self.module.check_mode:
            hf_snapshot.record_stat(self.path)  # after a chown of set_attributes too: no re-hash next run
        self.module.exit_json(
            changed=changed, path=self.path, commit_sha=sha, revision=self.revision,
            bytes=sum(e["size"] for e in expected.values()), files=len(expected),
            weights_bytes=loaded_weights_bytes(self.path, expected),
            downloaded_files=download, downloaded_bytes=download_bytes, resumed_files=sorted(resumed),
            linked_files=sorted(linked), manifest=hf_snapshot.read_manifest(self.path),
        )


class Adoption:
    """state=adopted: verify against a manifest and record, with no network and no huggingface_hub."""

    def __init__(self, module):
        self.module = module
        p = module.params
        self.repo_id, self.revision, self.path = p["repo_id"], p["revision"], p["path"]
        self.legacy_home = None  # a snapshot carried in (or fetched before per-commit dirs) flat in the home

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, repo_id=self.repo_id, revision=self.revision, path=self.path, **extra)

    def manifest(self):
        p = self.module.params
        manifest, origin = p["manifest"], "the manifest option"
        if manifest is None:
            origin = os.path.join(self.path, hf_snapshot.MANIFEST)
            manifest = hf_snapshot.read_manifest(self.path)
            if manifest is None:
                self.fail(f"{self.path} holds no snapshot manifest ({hf_snapshot.MANIFEST}) to adopt it against: "
                          "copy the snapshot together with its manifest, or pass the option 'manifest'")
        problem = hf_snapshot.manifest_problem(manifest)
        if problem:
            self.fail(f"{origin} cannot be adopted: {problem}")
        if manifest["repo_id"] != self.repo_id:
            self.fail(f"{origin} is a snapshot of {manifest['repo_id']}, not of {self.repo_id}")
        if not hf_snapshot.is_commit_sha(self.revision):
            self.fail(f"revision '{self.revision}' cannot be resolved offline: pin the commit sha "
                      f"({origin} records {manifest['commit_sha']})")
        if manifest["commit_sha"] != self.revision:
            self.fail(f"{origin} records commit {manifest['commit_sha']}, not the pinned {self.revision}")
        for key in ("allow_patterns", "ignore_patterns"):
            if p[key] and p[key] != manifest.get(key):
                self.fail(f"{origin} was made with {key} {manifest.get(key)}, not {p[key]}: the file list comes "
                          f"from the manifest, so the patterns must be the same")
        return manifest

    def refuse(self, manifest, state, delivered):
        """Leaves nothing that could pass for the snapshot, then fails naming the files."""
        incoming = os.path.join(self.path, hf_snapshot.INCOMING)
        for rel in state["rejected"]:
            os.unlink(os.path.join(delivered, rel))  # sent again by the next transfer
        if delivered != incoming:  # claimed by this run: the good files wait for the next run, as delivered
            for rel in state["take"]:
                os.renames(os.path.join(delivered, rel), os.path.join(incoming, rel))
            shutil.rmtree(delivered, ignore_errors=True)
        removed = [self.path] if state["wrong"] else []
        if state["wrong"]:
            hf_snapshot.remove_manifest(self.path)
        home = self.legacy_home  # the carried-in manifest in the home: it vouches for a file proven wrong
        wrong = state["wrong"] + [os.path.join(home, rel) for rel in state["missing"]
                                  if home and os.path.lexists(os.path.join(home, rel))]
        if len(wrong) > len(state["wrong"]):
            hf_snapshot.remove_manifest(home)  # so that it can never pass for complete
            removed.append(home)
        where = f"{self.path} ({self.repo_id}@{manifest['commit_sha']})"
        details = []
        if state["rejected"]:
            details.append(f"delivered but not matching the manifest, deleted: {state['rejected']}")
        if wrong:
            details.append(f"on disk but not matching the manifest: {wrong}, so the manifest of "
                           f"{' and '.join(removed)} was removed")
        self.fail(f"{where}: {len(state['missing'])} file(s) missing or not matching the manifest (size, "
                  f"sha256): {state['missing']}" + "".join("; " + d for d in details),
                  missing_files=state["missing"])

    def apply(self, manifest, state, delivered, linked):
        os.makedirs(self.path, exist_ok=True)
        hf_snapshot.remove_manifest(self.path)  # from here on the dir must not look complete
        if linked:
            staging = hf_snapshot.new_staging(self.path)
            hf_snapshot.link_into(staging, linked)
            hf_snapshot.move_into_place(self.path, staging, sorted(linked), [])
        hf_snapshot.move_into_place(self.path, delivered, state["take"], state["stale"])
        shutil.rmtree(os.path.join(self.path, hf_snapshot.INCOMING), ignore_errors=True)
        hf_snapshot.remove_stagings(self.path)  # ours, and any a killed run left (we hold the lock)
        hf_snapshot.write_manifest(self.path, hf_snapshot.build_manifest(
            self.repo_id, manifest.get("revision"), manifest["commit_sha"], manifest["files"],
            manifest.get("allow_patterns"), manifest.get("ignore_patterns"), host=platform.node()))

    def run(self):
        p = self.module.params
        if p["snapshots"]:  # path is the model's home: the pinned commit's own dir
            if not hf_snapshot.is_commit_sha(self.revision):
                self.fail(f"revision '{self.revision}' cannot be resolved offline: pin the commit sha")
            chosen = p if p["manifest"] is None else p["manifest"]  # the seed's selection names the dir, as there
            self.path = hf_snapshot.snapshot_path(self.path, self.revision, chosen.get("allow_patterns"),
                                                  chosen.get("ignore_patterns"))
        delivered = os.path.join(self.path, hf_snapshot.INCOMING)
        if not self.module.check_mode:  # see HfModel.run
            lock_or_fail(self.module, self.path, self.fail)
        manifest = self.carried_in() if p["snapshots"] and p["manifest"] is None else self.manifest()
        records = manifest["files"]
        if not self.module.check_mode:
            try:
                delivered = hf_snapshot.claim_incoming(self.path, records) or delivered
            except OSError as err:
                self.fail(f"adopting the snapshot in {self.path} failed: {err}")
        state = hf_snapshot.adoption_plan(self.path, manifest, platform.node(), deep=self.module.params["verify"],
                                          delivered_dir=delivered)
        # What another snapshot of this home holds is hard-linked, not received (a transfer never sends it).
        linked = hf_snapshot.linkable(self.path, records, [r for r in state["missing"] if r not in state["rejected"]],
                                      platform.node(), deep=self.module.params["verify"])
        state["missing"] = [r for r in state["missing"] if r not in linked]
        state["wrong"] = [r for r in state["wrong"] if r not in linked]
        changed = not state["complete"]
        if changed and not self.module.check_mode:
            try:
                if state["missing"]:
                    self.refuse(manifest, state, delivered)
                self.apply(manifest, state, delivered, linked)
            except OSError as err:
                self.fail(f"adopting the snapshot in {self.path} failed: {err}")
        changed = set_attributes(self.module, self.path, records, changed)
        if not self.module.check_mode and not state["missing"]:
            hf_snapshot.record_stat(self.path)  # verified just now, under the lock: no re-hash next run
        self.module.exit_json(
            changed=changed, path=self.path, commit_sha=manifest["commit_sha"], revision=self.revision,
            bytes=sum(r["size"] for r in records.values()), files=len(records),
            weights_bytes=loaded_weights_bytes(self.path, records),
            received_files=state["take"], received_bytes=sum(records[rel]["size"] for rel in state["take"]),
            missing_files=state["missing"], linked_files=sorted(linked),
            manifest=manifest if self.module.check_mode else hf_snapshot.read_manifest(self.path),
        )

    def carried_in(self):
        """Offline adoption into a per-commit dir: the manifest carried in with the snapshot, in that dir
        or (a snapshot carried in before this layout, or the host's own flat dir) in the home itself."""
        if hf_snapshot.read_manifest(self.path) is None:
            home = os.path.dirname(os.path.dirname(self.path))
            legacy = hf_snapshot.read_manifest(home)
            if legacy is not None and legacy.get("commit_sha") == self.revision:
                self.module.params["manifest"] = legacy  # its files are linked into the commit's dir
                self.legacy_home = home
        return self.manifest()


def inspected(module):
    """state=inspected: the complete snapshot of the model's home (path) a host serves for revision,
    read from disk only (playbooks/rollout.yml alone: nothing is fetched)."""
    p = module.params
    home = p["path"]
    snap = hf_snapshot.find_snapshot(home, p["revision"], p["allow_patterns"], p["ignore_patterns"], p["repo_id"])
    if snap is None:
        module.fail_json(
            msg=f"{home} holds no complete snapshot of {p['repo_id']}@{p['revision']} with allow_patterns "
                f"{p['allow_patterns']} and ignore_patterns {p['ignore_patterns']}: run site.yml "
                "(gpufleet.serving.site), which fetches it, before playbooks/rollout.yml alone",
            path=home, repo_id=p["repo_id"], revision=p["revision"])
    manifest = snap["manifest"]
    records = manifest["files"]
    module.exit_json(changed=False, path=snap["path"], home=home, commit_sha=manifest["commit_sha"],
                     revision=p["revision"], bytes=sum(r["size"] for r in records.values()), files=len(records),
                     weights_bytes=loaded_weights_bytes(snap["path"], records), manifest=manifest)


def pruned(module):
    """state=pruned: path is the snapshot dir the engine now serves; the other snapshot dirs of its home
    beyond the keep newest, and not mounted by any container, are removed."""
    p = module.params
    current = os.path.abspath(p["path"])
    home = hf_snapshot.home_of(current)
    result = {"path": current, "home": home, "removed": [], "kept": [current], "in_use": [], "skipped": []}
    if p["keep"] < 1:
        module.fail_json(msg=f"keep must be at least 1 (the snapshot the engine serves), got {p['keep']}")
    if home is None:
        module.exit_json(changed=False, **result)  # a flat dir: one snapshot, nothing beside it
    snapshots = hf_snapshot.list_snapshots(home)
    plan = hf_snapshot.prune_plan(snapshots, current, p["keep"], p["mounts"] or [])
    result.update(kept=plan["keep"], in_use=plan["in_use"])
    by_path = {s["path"]: s for s in snapshots}
    for path in plan["remove"]:
        if module.check_mode:
            result["removed"].append(path)
            continue
        try:  # a run fetching into it right now holds its lock: left for the next prune
            fd = hf_snapshot.lock(path, 0) if not by_path[path]["legacy"] else None
        except hf_snapshot.LockTimeout:
            result["skipped"].append(path)
            continue
        try:
            hf_snapshot.remove_snapshot(by_path[path])
        except OSError as err:
            module.fail_json(msg=f"removing the old snapshot {path} failed: {err}", **result)
        finally:
            if fd is not None:
                os.close(fd)
        result["removed"].append(path)
    module.exit_json(changed=bool(result["removed"]), **result)


def lock_or_fail(module, path, fail):
    """Holds the lock of `path` until the module exits (see hf_snapshot.lock), or fails saying who has it."""
    timeout = module.params["lock_timeout"]
    try:
        return hf_snapshot.lock(path, timeout)
    except hf_snapshot.LockTimeout as err:
        holder = err.holder or {}
        who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder
               else "holder unknown")
        fail(f"{path} is in use by another run ({who}, lock file {err.path}); gave up after waiting "
             f"{timeout:g} s: let that run finish, or raise the module option lock_timeout (role variable "
             "model_fetch_lock_timeout)", lock_holder=err.holder)
    except OSError as err:
        fail(f"path {path} is not writable: cannot create its lock file {hf_snapshot.lock_path(path)}: {err}")


def loaded_weights_bytes(snapshot_dir, files):
    """Size of the weight files the engines load from the snapshot (module_utils/weight_files.py), from
    the selected files' recorded sizes; the safetensors index is read from disk when it is there."""
    return weight_files.weights_bytes({rel: f["size"] for rel, f in files.items()},
                                      weight_files.read_index(snapshot_dir))


def set_attributes(module, snapshot_dir, names, changed):
    if not os.path.isdir(snapshot_dir):  # check mode before the first fetch
        return changed
    p = module.params
    changed = module.set_mode_if_different(snapshot_dir, p["mode"], changed)
    if p["owner"] is None and p["group"] is None:
        return changed
    paths = [snapshot_dir, os.path.join(snapshot_dir, hf_snapshot.MANIFEST)]
    paths += [os.path.join(snapshot_dir, rel) for rel in names]
    for path in paths:
        if os.path.lexists(path):
            changed = module.set_owner_if_different(path, p["owner"], changed)
            changed = module.set_group_if_different(path, p["group"], changed)
    return changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repo_id=dict(type="str", required=True),
            revision=dict(type="str", default="main"),
            path=dict(type="path"),
            state=dict(type="str", choices=["present", "resolved", "adopted", "inspected", "pruned"], default="present"),
            snapshots=dict(type="bool", default=False),
            keep=dict(type="int", default=2),
            mounts=dict(type="list", elements="str"),
            manifest=dict(type="dict"),
            allow_patterns=dict(type="list", elements="str"),
            ignore_patterns=dict(type="list", elements="str"),
            endpoint=dict(type="str", default="https://huggingface.co"),
            timeout=dict(type="float", default=60),
            token=dict(type="str", no_log=True),
            verify=dict(type="bool", default=False),
            min_free_bytes=dict(type="int", default=0),
            lock_timeout=dict(type="float", default=600),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw"),
        ),
        required_if=[("state", "present", ["path"]), ("state", "adopted", ["path"]), ("state", "inspected", ["path"]),
                     ("state", "pruned", ["path"])],
        supports_check_mode=True,
    )
    if module.params["state"] == "adopted":  # offline: no huggingface_hub needed on the host
        Adoption(module).run()
    elif module.params["state"] == "inspected":  # offline too
        inspected(module)
    elif module.params["state"] == "pruned":
        pruned(module)
    elif HF_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("huggingface_hub"), exception=HF_IMPORT_ERROR)
    else:
        # The agent-detection telemetry would call the *public* Hub (HF_ENDPOINT, not `endpoint`) and wait
        # up to 3 s on air-gapped hosts; progress bars would only pollute the module's stderr.
        hf_constants.HF_HUB_DISABLE_TELEMETRY = True
        disable_progress_bars()
        bound_every_call(module.params["timeout"])
        HfModel(module).run()


if __name__ == "__main__":
    main()
