"""One dir per snapshot (commit + file selection) under a model's home (issue 16): its naming, the migration of
a flat dir fetched before, hard links for files another snapshot already holds, the pruning choice, and
hf_model's states inspected and pruned. The lab test is test_rollout.py's model-change + failed-canary test."""
import json
import os
import platform

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot
from fixtures.hf_server import MAIN, hf_repos, hf_server  # noqa: F401 (pytest fixtures, used by name)  # pylint: disable=unused-import
from test_hf_model import run_module
from test_model_fetch import FILES, SHA, adopt, write_snapshot

OTHER = "38f9117fe9090e70c2089b9fa8c25e5f960fb1fd"


def inodes(path):
    found = {}
    for dirpath, _dirs, names in os.walk(path):
        if hf_snapshot.SNAPSHOTS in os.path.relpath(dirpath, path).split(os.sep):
            continue
        for name in names:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, path)] = (os.stat(full).st_ino, open(full, "rb").read())
    return found


# -- naming ---------------------------------------------------------------------------------------------------


def test_snapshot_id_is_the_commit_and_a_hash_of_a_file_selection():
    assert hf_snapshot.snapshot_id(SHA) == hf_snapshot.snapshot_id(SHA, [], None) == SHA
    narrowed = hf_snapshot.snapshot_id(SHA, ["*.json"])
    assert narrowed.startswith(SHA + "-") and len(narrowed) == 40 + 1 + 12
    assert narrowed != hf_snapshot.snapshot_id(SHA, None, ["*.json"]) != hf_snapshot.snapshot_id(OTHER, ["*.json"])
    assert hf_snapshot.snapshot_path("/srv/m", SHA) == "/srv/m/snapshots/" + SHA
    assert hf_snapshot.home_of("/srv/m/snapshots/" + SHA) == "/srv/m"
    assert hf_snapshot.home_of("/srv/m") is None


# -- the pruning choice ---------------------------------------------------------------------------------------


def snap(path, mtime, legacy=False, complete=True):
    return {"path": path, "id": None if legacy else os.path.basename(path), "legacy": legacy,
            "manifest": {"files": {}} if complete else None, "mtime": mtime}


def test_prune_keeps_the_served_one_and_the_newest_others_never_a_mounted_one():
    home = "/srv/m"
    d = {n: "%s/snapshots/%s" % (home, n) for n in "abcde"}
    snaps = [snap(d["e"], 5), snap(d["d"], 4, complete=False), snap(d["c"], 3), snap(d["b"], 2), snap(d["a"], 1),
             snap(home, 0, legacy=True)]
    # b serves; e is the newest other complete one (a rollback target); d never completed; a is mounted by a
    # stopped <name>-previous; the legacy flat files are not mounted.
    plan = hf_snapshot.prune_plan(snaps, d["b"], 2, [d["a"], "/etc/gpufleet/gpufleet-engine"])
    assert plan == {"keep": [d["b"], d["e"]], "remove": [d["d"], d["c"], home], "in_use": [d["a"]]}
    assert hf_snapshot.prune_plan(snaps, d["b"], 1, [])["remove"] == [d["e"], d["d"], d["c"], d["a"], home]
    # An engine from before per-commit dirs mounts the home: its flat files stay, the snapshots/ dirs do not count.
    plan = hf_snapshot.prune_plan(snaps, d["e"], 1, [home])
    assert home in plan["in_use"] and home not in plan["remove"] and d["c"] in plan["remove"]
    # A mount of one snapshot dir is not a mount of the legacy files around it.
    assert home in hf_snapshot.prune_plan(snaps, d["e"], 1, [d["a"]])["remove"]
    with pytest.raises(ValueError):
        hf_snapshot.prune_plan(snaps, d["b"], 0, [])
    # Migrated: the flat files of the commit that has its own dir now are a duplicate, not a rollback target.
    migrated = [dict(snap(d["b"], 2), manifest={"commit_sha": SHA, "files": {}}),
                dict(snap(home, 9, legacy=True), manifest={"commit_sha": SHA, "files": {}}),
                dict(snap(d["a"], 1), manifest={"commit_sha": OTHER, "files": {}})]
    assert hf_snapshot.prune_plan(migrated, d["b"], 2, [])["remove"] == [home]
    assert hf_snapshot.prune_plan(migrated, d["b"], 2, [home])["remove"] == [], "a mounted one stays"


# -- migration of a flat dir, hard links ----------------------------------------------------------------------


def test_a_flat_dir_is_migrated_offline_by_hard_links_without_touching_it(tmp_path):
    """A host fetched before per-commit dirs: its engine mounts <home> itself. Adopting the commit into its own dir
    links the verified files (same inodes), never moves or rewrites one, and leaves the flat manifest as it was."""
    home = tmp_path / "home"
    write_snapshot(str(home), host=platform.node())
    before = inodes(str(home))
    result = adopt(home, tmp_path, snapshots=True)
    assert result["changed"] and not result.get("failed"), result
    commit_dir = str(home / "snapshots" / SHA)
    assert result["path"] == commit_dir and result["linked_files"] == sorted(FILES) and result["received_files"] == []
    assert inodes(str(home)) == before, "the flat dir an engine may mount was changed"
    for rel, data in FILES.items():
        assert os.stat(os.path.join(commit_dir, rel)).st_ino == before[rel][0]
        assert open(os.path.join(commit_dir, rel), "rb").read() == data
    assert hf_snapshot.read_manifest(commit_dir)["host"] == platform.node()
    assert sorted(os.listdir(commit_dir)) == sorted([hf_snapshot.MANIFEST, "config.json", "model.safetensors", "sub"])
    assert adopt(home, tmp_path, snapshots=True)["changed"] is False  # a second run: nothing to do


def test_a_carried_in_flat_dir_with_a_wrong_file_is_hashed_and_refused(tmp_path):
    home = tmp_path / "home"
    write_snapshot(str(home), host="elsewhere")  # another host's manifest vouches for nothing here
    with open(home / "sub" / "tokenizer.json", "wb") as f:
        f.write(b"[]\n")  # same size, other bytes
    result = adopt(home, tmp_path, snapshots=True)
    assert result.get("failed") and "sub/tokenizer.json" in result["msg"], result
    assert hf_snapshot.read_manifest(str(home)) is None, "the flat dir could still pass for complete"
    assert hf_snapshot.read_manifest(str(home / "snapshots" / SHA)) is None


def test_fleet_adoption_links_what_another_commit_holds_and_asks_only_for_the_rest(tmp_path):
    """The seed's manifest of a new commit: files the host holds in its previous commit's dir are linked, so the
    check the transfer is based on lists only the changed file."""
    home = tmp_path / "home"
    old = write_snapshot(str(home / "snapshots" / SHA), host=platform.node())
    new_files = dict(FILES, **{"config.json": b'{"model_type": "qwen2", "x": 1}\n'})
    seed = write_snapshot(str(tmp_path / "seed"), files=new_files)
    seed = dict(seed, commit_sha=OTHER)
    check = adopt(home, tmp_path, check_mode=True, snapshots=True, revision=OTHER, manifest=seed)
    assert check["missing_files"] == ["config.json"] and check["path"] == str(home / "snapshots" / OTHER), check
    incoming = home / "snapshots" / OTHER / hf_snapshot.INCOMING
    incoming.mkdir(parents=True)
    (incoming / "config.json").write_bytes(new_files["config.json"])
    result = adopt(home, tmp_path, snapshots=True, revision=OTHER, manifest=seed)
    assert result["changed"] and result["received_files"] == ["config.json"], result
    assert result["linked_files"] == ["model.safetensors", "sub/tokenizer.json"]
    assert hf_snapshot.read_manifest(str(home / "snapshots" / SHA))["files"] == old["files"]  # untouched
    assert (home / "snapshots" / SHA / "config.json").read_bytes() == FILES["config.json"]


# -- hf_model state=inspected and state=pruned ----------------------------------------------------------------


def test_inspected_finds_the_pinned_commits_dir_or_the_flat_one_and_fails_with_the_fix(tmp_path):
    home = tmp_path / "home"
    write_snapshot(str(home), host=platform.node())  # flat, from before
    found = adopt(home, tmp_path, state="inspected")
    assert found["path"] == str(home) and found["commit_sha"] == SHA and found["changed"] is False, found
    write_snapshot(str(home / "snapshots" / SHA), host=platform.node())
    found = adopt(home, tmp_path, state="inspected")
    assert found["path"] == str(home / "snapshots" / SHA) and found["bytes"] == sum(map(len, FILES.values()))
    missing = adopt(home, tmp_path, state="inspected", revision=OTHER)
    assert missing.get("failed") and "run site.yml" in missing["msg"], missing
    narrowed = adopt(home, tmp_path, state="inspected", allow_patterns=["*.json"])
    assert narrowed.get("failed"), narrowed  # another file selection is another snapshot


def test_pruned_removes_old_dirs_never_a_mounted_one(tmp_path):
    home = tmp_path / "home"
    dirs = {}
    for i, sha in enumerate(["1" * 40, "2" * 40, "3" * 40, SHA]):
        dirs[sha] = str(home / "snapshots" / sha)
        write_snapshot(dirs[sha], host=platform.node())
        os.utime(os.path.join(dirs[sha], hf_snapshot.MANIFEST), (1000 + i, 1000 + i))
    mounted = [dirs["1" * 40] + ":/models/model"[:0]]
    check = adopt(dirs[SHA], tmp_path, check_mode=True, state="pruned", keep=2, mounts=mounted)
    assert check["changed"] and check["removed"] == [dirs["2" * 40]] and all(map(os.path.isdir, dirs.values()))
    result = adopt(dirs[SHA], tmp_path, state="pruned", keep=2, mounts=mounted)
    assert result["removed"] == [dirs["2" * 40]] and result["kept"] == [dirs[SHA], dirs["3" * 40]], result
    assert sorted(d for d in dirs.values() if os.path.isdir(d)) == sorted([dirs[SHA], dirs["3" * 40], dirs["1" * 40]])
    assert adopt(dirs[SHA], tmp_path, state="pruned", keep=2, mounts=mounted)["changed"] is False
    bad = adopt(dirs[SHA], tmp_path, state="pruned", keep=0)
    assert bad.get("failed") and "at least 1" in bad["msg"]


# -- a download beside the previous commit ------------------------------------------------------------------


def test_a_new_commit_is_fetched_into_its_own_dir_linking_the_unchanged_files(hf_server, tmp_path):
    home = str(tmp_path / "models" / "tiny-qwen2")
    tag_sha, main_sha = hf_server.sha(MAIN, "v1.0"), hf_server.sha(MAIN, "main")
    first = run_module(hf_server, tmp_path, repo_id=MAIN, revision="v1.0", path=home, snapshots=True)
    assert first["changed"] and first["path"] == os.path.join(home, "snapshots", tag_sha), first
    old = first["path"]
    before = {n: (os.stat(os.path.join(old, n)).st_ino, open(os.path.join(old, n), "rb").read())
              for n in os.listdir(old)}
    mark = hf_server.log_mark()
    update = run_module(hf_server, tmp_path, repo_id=MAIN, revision="main", path=home, snapshots=True)
    assert update["path"] == os.path.join(home, "snapshots", main_sha), update
    assert update["downloaded_files"] == ["README.md", "generation_config.json"]
    assert hf_server.downloads(since=mark) == {"README.md": 1, "generation_config.json": 1}
    assert "model.safetensors" in update["linked_files"] and "generation_config.json" not in update["linked_files"]
    assert os.stat(os.path.join(update["path"], "model.safetensors")).st_ino == before["model.safetensors"][0]
    # The old commit's dir (what a running engine mounts) is as it was, its manifest included.
    assert {n: (os.stat(os.path.join(old, n)).st_ino, open(os.path.join(old, n), "rb").read())
            for n in os.listdir(old)} == before
    with open(os.path.join(update["path"], "generation_config.json")) as f:
        assert json.load(f)["max_new_tokens"] == 128
    again = run_module(hf_server, tmp_path, repo_id=MAIN, revision="main", path=home, snapshots=True)
    assert again["changed"] is False and again["downloaded_files"] == [] and again["linked_files"] == []


def test_orphaned_partials_skips_a_download_that_finishes_while_they_are_listed(tmp_path, monkeypatch):
    """A `*.incomplete` file renamed by its live download between the listing and the stat is not an orphan
    (a FileNotFoundError used to escape; seen in a full test run)."""
    staging = tmp_path / (hf_snapshot.STAGING + ".1.x") / ".cache"
    staging.mkdir(parents=True)
    (staging / "a.incomplete").write_bytes(b"12345")
    (staging / "b.incomplete").write_bytes(b"12")
    real_getsize = os.path.getsize

    def vanishing(path):
        if path.endswith("b.incomplete"):
            os.unlink(path)  # what huggingface_hub's rename does to a finished download
        return real_getsize(path)

    monkeypatch.setattr(os.path, "getsize", vanishing)
    assert hf_snapshot.orphaned_partials(str(tmp_path)) == {str(staging / "a.incomplete"): 5}
