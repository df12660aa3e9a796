"""gpufleet.serving.hf_model when two runs share one snapshot dir (two playbook runs at once, the fleet's
controller cache, hosts on one NFS model store): one run at a time under a lock, a staging dir per run,
counters that say what was transferred, and a default run that sees a same-size rewrite by its stat.

The module runs as a subprocess against the lab Hugging Face server (helpers of test_hf_model.py); the
race test adds a repo of its own whose two commits hold different weights of the same size, the case
where a mix-up cannot be seen by size."""
import hashlib
import json
import os
import platform
import sys
import threading
import time

import pytest
from test_hf_model import MAIN, MAIN_FILES, manifest, run_module, sha256_of, start_module
from test_model_fetch import FILES, write_snapshot

from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot
from fixtures.hf_server import HF_LAB, HfServer, hf_repos, hf_server, hf_server_slow  # noqa: F401 (pytest fixtures, used by name)  # pylint: disable=unused-import

sys.path.insert(0, HF_LAB)
import build_repos  # noqa: E402  (lab/hf: the lab's repo builder)

RACE = "gpufleet/tiny-race"
RACE_FILES = [".gitattributes", "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
LOCKED = "is in use by another run"


def wait_result(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    try:
        return json.loads(out)
    except ValueError:
        pytest.fail(f"module printed no JSON (rc={proc.returncode}): {out!r} {err!r}")


def sha256s(path, names):
    return {name: sha256_of(os.path.join(path, name)) for name in names}


@pytest.fixture(scope="module")
def race_hub(tmp_path_factory):
    """A server for RACE: commits C1 and C2; config.json and both weight shards differ between them, each
    at the same size.
    Yields (server, {commit: {file: sha256}})."""
    root = tmp_path_factory.mktemp("race-root")
    work = str(tmp_path_factory.mktemp("race-work") / "repo")
    build_repos.new_work_repo(work)
    truth = {}
    for n in (1, 2):
        contents = {"config.json": json.dumps({"model_type": "qwen2", "commit": n}).encode(),
                    RACE_FILES[2]: hashlib.shake_256(b"one%d" % n).digest(3 << 20),
                    RACE_FILES[3]: hashlib.shake_256(b"two%d" % n).digest(1 << 20)}
        for name, data in contents.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data)
        sha = build_repos.commit(work, f"commit {n}", f"2025-0{n}-01T00:00:00+00:00")
        truth[sha] = sha256s(work, RACE_FILES)
    build_repos.publish(work, os.path.join(root, "repos", RACE + ".git"))
    server = HfServer(str(root), {}, str(tmp_path_factory.mktemp("race-server")))
    yield server, truth
    server.stop()


# -- (a) two runs at once, over and over -----------------------------------------------------------


def test_two_runs_at_once_never_record_a_wrong_file(race_hub, tmp_path):
    """Each round starts two runs on one dir at the same moment, one for C1 and one for C2 (files that
    differ at the same sizes). A run either succeeds and then everything it reports is its commit's bytes,
    or fails with the lock message; after both, the dir holds exactly one commit, as its manifest says."""
    server, truth = race_hub
    c1, c2 = sorted(truth)
    path = str(tmp_path / "models" / "race")
    for rnd in range(16):
        commits = (c1, c2) if rnd % 2 else (c2, c1)
        # Some rounds, one run does not wait (lock_timeout 0): the lock message is the only failure allowed.
        timeouts = (60, 0 if rnd % 4 == 3 else 60)
        procs = [start_module(server, tmp_path, repo_id=RACE, revision=c, path=path, lock_timeout=t)
                 for c, t in zip(commits, timeouts)]
        results = [wait_result(p) for p in procs]
        winners = []
        for commit, result in zip(commits, results):
            if result.get("failed"):
                assert LOCKED in result["msg"], (rnd, result["msg"])
                continue
            assert result["commit_sha"] == commit == (result["manifest"] or {}).get("commit_sha"), (rnd, result)
            reported = {name: rec["sha256"] for name, rec in result["manifest"]["files"].items()}
            assert reported == truth[commit], (rnd, "a run recorded another commit's file")
            winners.append(commit)
        assert winners, (rnd, results)
        on_disk = manifest(path)
        assert on_disk["commit_sha"] in winners, rnd
        assert sha256s(path, RACE_FILES) == truth[on_disk["commit_sha"]], (rnd, "bytes on disk are not the manifest's")
        assert sorted(os.listdir(path)) == sorted(RACE_FILES + [hf_snapshot.MANIFEST]), rnd  # no staging left


# -- (b) the lock ------------------------------------------------------------------------------------


def test_a_held_lock_fails_at_once_naming_the_holder_then_is_waited_for(hf_server, tmp_path):
    snapshot = str(tmp_path / "models" / "tiny-qwen2")
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    held = os.fdopen(hf_snapshot.lock(snapshot, 0), "rb")  # this test process is "the other run"
    try:
        start = time.monotonic()
        result = run_module(hf_server, tmp_path, lock_timeout=0, **args)
        assert time.monotonic() - start < 20  # python + one metadata request, no waiting
        assert result.get("failed"), result
        for part in (snapshot, LOCKED, f"pid {os.getpid()} on {platform.node()}", "lock_timeout",
                     "model_fetch_lock_timeout"):
            assert part in result["msg"], (part, result["msg"])
        assert result["lock_holder"]["pid"] == os.getpid()
        assert not os.path.exists(snapshot)  # nothing read or written without the lock

        # Check mode writes nothing and takes no lock: it reports, even while another run holds it.
        probe = run_module(hf_server, tmp_path, check_mode=True, lock_timeout=0, **args)
        assert probe["changed"] and "model.safetensors" in probe["downloaded_files"], probe

        # A run that may wait gets the lock when the holder lets go.
        threading.Timer(1.5, held.close).start()
        waited = run_module(hf_server, tmp_path, lock_timeout=60, **args)
        assert waited["changed"] and not waited.get("failed"), waited
    finally:
        held.close()
    assert manifest(snapshot)["commit_sha"] == hf_server.sha(MAIN, "v1.0")
    assert not os.path.exists(os.path.join(snapshot, hf_snapshot.LOCK))  # next to the dir, not in it
    assert os.path.exists(hf_snapshot.lock_path(snapshot))


# -- (c) leftovers of dead runs ------------------------------------------------------------------------


def test_staging_dirs_of_dead_runs_are_removed(hf_server, tmp_path):
    snapshot = str(tmp_path / "models" / "tiny-qwen2")
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    assert run_module(hf_server, tmp_path, **args)["changed"]
    before = sha256s(snapshot, manifest(snapshot)["files"])
    # The shared staging dir of runs before the lock, and the own dir of a run killed mid-download.
    for dead in (hf_snapshot.STAGING, hf_snapshot.STAGING + ".4242.deadbeef"):
        os.makedirs(os.path.join(snapshot, dead, ".cache"))
        with open(os.path.join(snapshot, dead, "model.safetensors.abc.incomplete"), "wb") as f:
            f.write(b"\0" * 1000)
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, **args)
    assert result["changed"] and result["downloaded_files"] == [] and result["resumed_files"] == [], result
    assert hf_snapshot.staging_dirs(snapshot) == [] and hf_snapshot.orphaned_partials(snapshot) == {}
    assert sha256s(snapshot, before) == before and hf_server.downloads(since=mark) == {}
    assert run_module(hf_server, tmp_path, **args)["changed"] is False


# -- (d) a same-size rewrite, without verify -------------------------------------------------------------


def test_a_same_size_rewrite_is_caught_by_its_stat_and_repaired(hf_server, tmp_path, monkeypatch):
    snapshot = str(tmp_path / "models" / "tiny-qwen2")
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    run_module(hf_server, tmp_path, **args)
    weights = os.path.join(snapshot, "model.safetensors")
    good = sha256_of(weights)
    recorded = manifest(snapshot)["stat"]["model.safetensors"]
    assert recorded == hf_snapshot.file_stat(weights)
    # Another commit's bytes at the same size, written in place, the mtime set back as `cp -p` would.
    with open(weights, "r+b") as f:
        f.write(os.urandom(4096))
    os.utime(weights, ns=(recorded["mtime_ns"], recorded["mtime_ns"]))
    assert os.path.getsize(weights) == recorded["size"]

    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, **args)  # no verify
    assert result["changed"] and result["downloaded_files"] == ["model.safetensors"], result
    assert hf_server.downloads(since=mark) == {"model.safetensors": 1}
    assert sha256_of(weights) == good == manifest(snapshot)["files"]["model.safetensors"]["sha256"]

    # Only a file whose stat changed is hashed, and its new stat is recorded when its bytes are right.
    info = {rel: {"size": r["size"], "blob_id": r["blob_id"], "lfs_sha256": r["sha256"]}
            for rel, r in manifest(snapshot)["files"].items()}
    config = os.path.join(snapshot, "config.json")
    os.utime(config)  # touched: same bytes
    hashed = []
    hash_file = hf_snapshot.hash_file
    monkeypatch.setattr(hf_snapshot, "hash_file", lambda p: hashed.append(os.path.basename(p)) or hash_file(p))
    assert hf_snapshot.plan(snapshot, info, manifest(snapshot)["commit_sha"])["complete"]
    assert hashed == ["config.json"]
    assert run_module(hf_server, tmp_path, **args)["changed"] is False
    assert manifest(snapshot)["stat"]["config.json"] == hf_snapshot.file_stat(config)

    # A manifest written before stats were recorded: trusted by size as then, and the stats get recorded.
    old = manifest(snapshot)
    del old["stat"]
    with open(os.path.join(snapshot, hf_snapshot.MANIFEST), "w", encoding="utf-8") as f:
        json.dump(old, f)
    mark = hf_server.log_mark()
    assert run_module(hf_server, tmp_path, **args)["changed"] is False
    assert hf_server.downloads(since=mark) == {}
    assert set(manifest(snapshot)["stat"]) == set(old["files"])


# -- (e) counters after a resume ---------------------------------------------------------------------------


def test_after_a_killed_run_the_counters_say_what_was_transferred(hf_server, hf_server_slow, tmp_path):
    snapshot = str(tmp_path / "models" / "tiny-qwen2")
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    small = sorted(set(MAIN_FILES) - {"README.md", "model.safetensors"})  # README.md came with main
    proc = start_module(hf_server_slow, tmp_path, **args)  # the weights take ~7 s there
    try:
        deadline = time.monotonic() + 60
        while True:  # the small files done, the weights half-way: kill it
            staged = hf_snapshot.staging_dirs(snapshot)
            if (staged and hf_snapshot.orphaned_partials(snapshot)
                    and all(os.path.isfile(os.path.join(staged[0], name)) for name in small)):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the weights download never started"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    assert not os.path.exists(os.path.join(snapshot, hf_snapshot.MANIFEST))

    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, **args)
    assert result["changed"] and result["resumed_files"] == small, result
    assert result["downloaded_files"] == ["model.safetensors"]
    transferred = sum(int(r["bytes"]) for r in hf_server.requests(since=mark)
                      if r["method"] == "GET" and "/resolve/" in r["path"])
    assert result["downloaded_bytes"] == transferred == os.path.getsize(os.path.join(snapshot, "model.safetensors"))
    assert hf_server.downloads(since=mark) == {"model.safetensors": 1}
    for name, record in manifest(snapshot)["files"].items():
        assert sha256_of(os.path.join(snapshot, name)) == record["sha256"]
    assert hf_snapshot.staging_dirs(snapshot) == []


# -- fleet deliveries: rsync holds no lock ---------------------------------------------------------------


def test_adoption_checks_and_moves_only_the_files_it_claimed(tmp_path):
    """Another run's transfer may drop another commit's file into .gpufleet-incoming/ at any moment: the
    adopting run moves the delivered files into a dir of its own first, and what it checks is what it
    moves into place."""
    seed, host = str(tmp_path / "seed"), tmp_path / "host"
    seed_manifest = write_snapshot(seed, host="seed")
    incoming = host / hf_snapshot.INCOMING
    for rel, data in FILES.items():
        (incoming / rel).parent.mkdir(parents=True, exist_ok=True)
        (incoming / rel).write_bytes(data)
    claimed = hf_snapshot.claim_incoming(str(host), seed_manifest["files"])
    assert os.path.basename(claimed).startswith(hf_snapshot.STAGING + ".")
    (incoming / "config.json").write_bytes(b'{"model_type": "not it"}')  # delivered meanwhile
    state = hf_snapshot.adoption_plan(str(host), seed_manifest, "host", delivered_dir=claimed)
    assert state["take"] == sorted(FILES) and state["missing"] == []  # the claimed bytes, not the new ones
    hf_snapshot.move_into_place(str(host), claimed, state["take"], [])
    assert (host / "config.json").read_bytes() == FILES["config.json"]
