"""Fleet and offline model fetching: hf_model state=adopted (no network, no huggingface_hub), the
adoption logic of hf_snapshot, and the model_fetch role's filters. The lab fleet tests are in
tests/integration/test_model_fetch_fleet.py."""
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.filter import model_fetch as filters
from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO_ROOT, "collections")
MODULE = "ansible_collections.gpufleet.serving.plugins.modules.hf_model"
REPO = "gpufleet/tiny-qwen2"
SHA = "0bd5fd24e3dc83924a8c235f3824371e3a6896e9"
FILES = {"config.json": b'{"model_type": "qwen2"}\n', "model.safetensors": bytes(range(256)) * 4000,
         "sub/tokenizer.json": b"{}\n"}


def write_snapshot(path, files=None, host="elsewhere"):
    """A snapshot dir with its manifest, as hf_model writes it (host: where it was verified)."""
    records = {}
    for rel, data in (FILES if files is None else files).items():
        full = os.path.join(path, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        sha256, blob_id = hf_snapshot.hash_file(full)
        records[rel] = {"size": len(data), "sha256": sha256, "blob_id": blob_id}
    manifest = hf_snapshot.build_manifest(REPO, "v1.0", SHA, records, host=host)
    hf_snapshot.write_manifest(path, manifest)
    return manifest


def flip_byte(path, offset=100):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def adopt(path, tmp_path, check_mode=False, pythonpath=COLLECTIONS, **args):
    """Runs hf_model state=adopted as Ansible would (arguments on stdin); HF_ENDPOINT points nowhere."""
    args = dict({"repo_id": REPO, "revision": SHA, "path": str(path), "state": "adopted",
                 "_ansible_check_mode": check_mode}, **args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=pythonpath, HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-m", MODULE], input=json.dumps({"ANSIBLE_MODULE_ARGS": args}),
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"module printed no JSON (rc={proc.returncode}): {proc.stdout!r} {proc.stderr!r}")


def own_manifest(path):
    return hf_snapshot.read_manifest(str(path))


# -- hf_model state=adopted ------------------------------------------------------------------------


def test_adopt_in_place_hashes_a_carried_snapshot_once_then_trusts_its_own_record(tmp_path):
    snap = tmp_path / "snap"
    carried = write_snapshot(str(snap))
    result = adopt(snap, tmp_path)
    assert result["changed"] is True, result
    assert (result["commit_sha"], result["files"], result["missing_files"]) == (SHA, len(FILES), [])
    recorded = own_manifest(snap)
    assert recorded["host"] == platform.node() and recorded["files"] == carried["files"]
    assert recorded["revision"] == "v1.0" and result["manifest"] == recorded

    # Its own record now: trusted with no hashing while the stat is the one recorded...
    assert adopt(snap, tmp_path)["changed"] is False
    # ...but a same-size rewrite changes the stat (mtime, ctime), so it is hashed and found without verify,
    # like state=present: a receiving host does not trust a file by its size.
    flip_byte(snap / "model.safetensors")
    failed = adopt(snap, tmp_path)
    assert failed["failed"] and "model.safetensors" in failed["msg"] and "manifest" in failed["msg"], failed
    assert own_manifest(snap) is None, "a dir holding a wrong file must not keep a manifest"


def test_adopt_a_chown_is_hashed_once_then_trusted_again(tmp_path):
    """A changed stat whose bytes are still right is re-recorded, so the next run hashes nothing."""
    snap = tmp_path / "snap"
    write_snapshot(str(snap))
    assert adopt(snap, tmp_path)["changed"] is True
    os.chmod(snap / "model.safetensors", 0o600)   # ctime moves, bytes do not
    assert adopt(snap, tmp_path)["changed"] is False
    recorded = own_manifest(snap)["stat"]["model.safetensors"]
    assert recorded == hf_snapshot.file_stat(str(snap / "model.safetensors"))


def test_adopt_in_place_a_wrong_carried_file_fails_and_leaves_no_manifest(tmp_path):
    snap = tmp_path / "snap"
    write_snapshot(str(snap))
    os.truncate(snap / "sub" / "tokenizer.json", 1)
    result = adopt(snap, tmp_path)
    assert result.get("failed") is True
    assert result["missing_files"] == ["sub/tokenizer.json"]
    assert "sub/tokenizer.json" in result["msg"] and "manifest" in result["msg"]
    assert not (snap / hf_snapshot.MANIFEST).exists()
    # Nothing to adopt against any more: a clear error, not a pass.
    again = adopt(snap, tmp_path)
    assert again["failed"] and "holds no snapshot manifest" in again["msg"]


def test_adopt_delivered_files_are_verified_moved_into_place_and_recorded(tmp_path):
    seed, host = tmp_path / "seed", tmp_path / "host"
    manifest = write_snapshot(str(seed), host="seed")
    incoming = host / hf_snapshot.INCOMING
    # The host already holds config.json (unrecorded: hashed), receives the others.
    os.makedirs(incoming / "sub")
    (host / "config.json").write_bytes(FILES["config.json"])
    (incoming / "model.safetensors").write_bytes(FILES["model.safetensors"])
    (incoming / "sub" / "tokenizer.json").write_bytes(FILES["sub/tokenizer.json"])

    probe = adopt(host, tmp_path, check_mode=True, manifest=manifest)
    assert probe["changed"] is True and probe["missing_files"] == []
    assert probe["received_files"] == ["model.safetensors", "sub/tokenizer.json"]
    assert os.path.isdir(incoming) and own_manifest(host) is None  # check mode touched nothing

    result = adopt(host, tmp_path, manifest=manifest)
    assert result["changed"] is True and result["received_bytes"] == len(FILES["model.safetensors"]) + 3
    assert sorted(os.listdir(host)) == sorted([hf_snapshot.MANIFEST, "config.json", "model.safetensors", "sub"])
    assert own_manifest(host)["files"] == manifest["files"]
    assert adopt(host, tmp_path, manifest=manifest)["changed"] is False


def test_adopt_a_wrong_delivery_is_deleted_and_reported_never_recorded(tmp_path):
    seed, host = tmp_path / "seed", tmp_path / "host"
    manifest = write_snapshot(str(seed), host="seed")
    incoming = host / hf_snapshot.INCOMING
    os.makedirs(incoming / "sub")
    for rel, data in FILES.items():
        (incoming / rel).write_bytes(data)
    flip_byte(incoming / "model.safetensors")
    result = adopt(host, tmp_path, manifest=manifest)
    assert result["failed"] and result["missing_files"] == ["model.safetensors"], result
    assert "delivered but not matching" in result["msg"]
    assert not (incoming / "model.safetensors").exists()  # the next transfer sends it again
    assert (incoming / "config.json").exists()  # good deliveries wait for it
    assert own_manifest(host) is None and not (host / "config.json").exists()
    probe = adopt(host, tmp_path, check_mode=True, manifest=manifest)
    assert probe["missing_files"] == ["model.safetensors"] and not probe.get("failed")


def test_adopt_a_new_commit_replaces_changed_files_and_removes_stale_ones(tmp_path):
    host = tmp_path / "host"
    old = write_snapshot(str(host), files=dict(FILES, **{"old.txt": b"gone\n"}), host=platform.node())
    new = write_snapshot(str(tmp_path / "seed"), files=dict(FILES, **{"config.json": b'{"v": 2}\n'}), host="seed")
    new["commit_sha"] = "1" * 40
    (host / hf_snapshot.INCOMING).mkdir()
    (host / hf_snapshot.INCOMING / "config.json").write_bytes(b'{"v": 2}\n')
    result = adopt(host, tmp_path, revision="1" * 40, manifest=new)
    assert result["changed"] and result["received_files"] == ["config.json"], result
    assert not (host / "old.txt").exists() and (host / "config.json").read_bytes() == b'{"v": 2}\n'
    assert own_manifest(host)["commit_sha"] == "1" * 40 and old["commit_sha"] == SHA
    assert not (host / hf_snapshot.INCOMING).exists()


@pytest.mark.parametrize("args, expected", [
    (dict(revision="main"), "cannot be resolved offline: pin the commit sha"),
    (dict(revision="2" * 40), "not the pinned"),
    (dict(repo_id="gpufleet/other"), "is a snapshot of gpufleet/tiny-qwen2, not of gpufleet/other"),
    (dict(allow_patterns=["*.json"]), "the patterns must be the same"),
    (dict(manifest={"format": 1, "repo_id": REPO, "commit_sha": SHA, "files": {"../x": {}}}), "outside the snapshot"),
    (dict(manifest={"format": 1, "repo_id": REPO, "commit_sha": SHA, "files": {"a": {"size": 1}}}), "no valid size"),
])
def test_adopt_refuses_what_it_cannot_verify(tmp_path, args, expected):
    snap = tmp_path / "snap"
    write_snapshot(str(snap))
    result = adopt(snap, tmp_path, **args)
    assert result.get("failed") is True and expected in result["msg"], result
    assert own_manifest(snap)["host"] == "elsewhere"  # untouched


def test_adopt_needs_no_huggingface_hub(tmp_path):
    shadow = tmp_path / "shadow" / "huggingface_hub"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    snap = tmp_path / "snap"
    write_snapshot(str(snap))
    result = adopt(snap, tmp_path, pythonpath=f"{shadow.parent}{os.pathsep}{COLLECTIONS}")
    assert result["changed"] is True and not result.get("failed"), result


# -- hf_snapshot ------------------------------------------------------------------------------------


def test_adoption_plan_sorts_files_into_take_keep_missing_and_wrong(tmp_path):
    manifest = write_snapshot(str(tmp_path / "seed"), host="seed")
    host = tmp_path / "host"
    (host / hf_snapshot.INCOMING).mkdir(parents=True)
    (host / hf_snapshot.INCOMING / "config.json").write_bytes(b"not it")
    (host / "model.safetensors").write_bytes(FILES["model.safetensors"])
    (host / "sub").mkdir()
    (host / "sub" / "tokenizer.json").write_bytes(b"[]\n")
    plan = hf_snapshot.adoption_plan(str(host), manifest, "host")
    assert plan == {"take": [], "rejected": ["config.json"], "missing": ["config.json", "sub/tokenizer.json"],
                    "wrong": ["sub/tokenizer.json"], "stale": [], "complete": False}


def test_adoption_plan_trusts_only_a_manifest_written_on_this_host(tmp_path):
    snap = str(tmp_path / "snap")
    manifest = write_snapshot(snap, host="this")
    assert hf_snapshot.adoption_plan(snap, manifest, "this")["complete"]  # its own record, same stat: trusted
    flip_byte(os.path.join(snap, "model.safetensors"))
    assert hf_snapshot.adoption_plan(snap, manifest, "this")["wrong"] == ["model.safetensors"]  # stat moved
    assert hf_snapshot.adoption_plan(snap, manifest, "this", deep=True)["wrong"] == ["model.safetensors"]
    assert hf_snapshot.adoption_plan(snap, manifest, "other")["wrong"] == ["model.safetensors"]
    os.makedirs(os.path.join(snap, hf_snapshot.INCOMING))
    assert not hf_snapshot.adoption_plan(snap, manifest, "this")["complete"]  # leftovers to clean up


def test_verify_record_checks_size_and_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    record = {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest(), "blob_id": "0" * 40}
    assert hf_snapshot.verify_record(str(path), record)  # the Hub's blob id of an LFS pointer is no check
    assert not hf_snapshot.verify_record(str(path), dict(record, size=4))
    assert not hf_snapshot.verify_record(str(path), dict(record, sha256="0" * 64))
    assert not hf_snapshot.verify_record(str(tmp_path / "absent"), record)


@pytest.mark.parametrize("manifest, problem", [
    (None, "not a gpufleet snapshot manifest"),
    ({"format": 2}, "not a gpufleet snapshot manifest"),
    ({"format": 1, "repo_id": REPO, "commit_sha": "main", "files": {}}, "no commit sha"),
    ({"format": 1, "repo_id": REPO, "commit_sha": SHA, "files": {}}, "no files"),
    ({"format": 1, "repo_id": REPO, "commit_sha": SHA, "files": {"/etc/x": {}}}, "outside"),
    ({"format": 1, "repo_id": REPO, "commit_sha": SHA, "files": {"a": {"size": 1, "sha256": "x", "blob_id": SHA}}},
     "no valid size"),
])
def test_manifest_problem(manifest, problem):
    assert problem in hf_snapshot.manifest_problem(manifest)


# -- the role's filters -------------------------------------------------------------------------------


def test_model_snapshots_fills_defaults_and_keys_ignore_the_dir():
    main = {"repo_id": REPO, "revision": SHA, "dir": "/data/m", "allow_patterns": [], "ignore_patterns": None}
    snaps = filters.model_snapshots(main, [{"repo_id": "gpufleet/tiny-qwen2-draft", "name": "draft"}], "/srv/models")
    assert snaps[0] == {"name": "tiny-qwen2", "repo_id": REPO, "revision": SHA, "dir": "/data/m",
                        "allow_patterns": None, "ignore_patterns": None,
                        "key": f"{REPO}@{SHA} allow=None ignore=None"}
    assert (snaps[1]["name"], snaps[1]["revision"], snaps[1]["dir"]) == (
        "draft", "main", "/srv/models/gpufleet--tiny-qwen2-draft")
    elsewhere = filters.model_snapshots(dict(main, dir="/other"))
    assert elsewhere[0]["key"] == snaps[0]["key"]
    assert filters.model_snapshots(dict(main, allow_patterns=["*.json"]))[0]["key"] != snaps[0]["key"]


@pytest.mark.parametrize("extras, message", [
    ([{"repo_id": "no-org"}], "model_fetch_extra_models[0]: repo_id must be 'org/name'"),
    ([{"repo_id": REPO}], "listed twice"),
    ([{"repo_id": "a/b", "dir": "/data/m/"}], "is already the dir of"),
])
def test_model_snapshots_refuses_ambiguous_input(extras, message):
    with pytest.raises(AnsibleFilterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        filters.model_snapshots({"repo_id": REPO, "dir": "/data/m"}, extras)


def test_model_fetch_disagreement_names_the_odd_host():
    wants = {"seed_host": "localhost", "offline": False, "snapshots": ["a@1 allow=None ignore=None"]}
    hostvars = {"h1": {"model_fetch_fleet_wants": wants}, "h2": {"model_fetch_fleet_wants": dict(wants)},
                "h3": {}, "h4": {"model_fetch_fleet_wants": dict(wants, snapshots=["a@2 allow=None ignore=None"])}}
    assert filters.model_fetch_disagreement(hostvars, ["h1", "h2", "h3"]) == []
    lines = filters.model_fetch_disagreement(hostvars, ["h3", "h1", "h2", "h4"])
    assert len(lines) == 1 and lines[0].startswith("h4 wants") and "a@2" in lines[0] and "but h1 wants" in lines[0]


def test_model_fetch_fact_publishes_the_model_and_its_extras():
    snaps = filters.model_snapshots({"repo_id": REPO, "dir": "/m"}, [{"repo_id": "o/d", "name": "draft"}])
    fact = filters.model_fetch_fact(snaps, [{"path": "/m/snapshots/" + "a" * 40, "commit_sha": "a" * 40, "bytes": 10,
                                             "weights_bytes": 6},
                                            {"path": "/srv/models/o--d/snapshots/" + "b" * 40, "commit_sha": "b" * 40,
                                             "bytes": 2, "weights_bytes": 1}])
    assert fact == {"repo_id": REPO, "dir": "/m/snapshots/" + "a" * 40, "commit_sha": "a" * 40, "bytes": 10,
                    "weights_bytes": 6,
                    "extra_models": [{"name": "draft", "repo_id": "o/d", "dir": "/srv/models/o--d/snapshots/" + "b" * 40,
                                      "commit_sha": "b" * 40, "bytes": 2, "weights_bytes": 1}]}


def test_model_fetch_fact_fails_on_a_result_without_the_commit_dir():
    """Only a skipped fetch (fleet mode's check run before the first download) plans from the model's home."""
    snaps = filters.model_snapshots({"repo_id": REPO, "dir": "/m"})
    assert filters.model_fetch_fact(snaps, [{"skipped": True, "changed": False}])["dir"] == "/m"
    with pytest.raises(AnsibleFilterError, match="returned no snapshot path"):
        filters.model_fetch_fact(snaps, [{"changed": False, "commit_sha": "a" * 40}])
    with pytest.raises(AnsibleFilterError, match="1 snapshot"):
        filters.model_fetch_fact(snaps, [])


def test_rsync_only_transfers_exactly_the_listed_files(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    names = ["a.json", "weights[1]*?.bin", "sub/deep/x.bin", "sub/y.bin", "not me.txt", "weights1xy.bin"]
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "y.bin").write_text("sub/y.bi_")  # same size and a newer mtime: still sent
    wanted = ["a.json", "weights[1]*?.bin", "sub/deep/x.bin", "sub/y.bin"]
    opts = [arg for opt in filters.rsync_only(wanted) for arg in shlex.split(opt)]  # as the command line does
    subprocess.run(["rsync", "-a", *opts, f"{src}/", f"{dest}/"], check=True, capture_output=True)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == sorted(wanted)
    assert all((dest / name).read_text() == name for name in wanted)
