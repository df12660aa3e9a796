"""gpufleet.serving.hf_model and the lab Hugging Face server, with the real huggingface_hub client.

The module runs as a subprocess (`python -m <module>`, arguments on stdin) so that a download can be
killed half-way; one test runs it through real Ansible."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot
from fixtures.hf_server import DRAFT, GATED, MAIN, REPO_ROOT
from fixtures.hf_server import hf_repos, hf_server, hf_server_slow  # noqa: F401 (pytest fixtures, used by name)  # pylint: disable=unused-import

MODULE = "ansible_collections.gpufleet.serving.plugins.modules.hf_model"
COLLECTIONS = os.path.join(REPO_ROOT, "collections")
MAIN_FILES = [".gitattributes", "README.md", "config.json", "generation_config.json", "model.safetensors",
              "tokenizer.json", "tokenizer_config.json"]


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def module_env(tmp_path, pythonpath=COLLECTIONS):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}  # no ambient token/endpoint
    return dict(env, PYTHONPATH=pythonpath, HF_HOME=str(tmp_path / "hf-home"))


def start_module(hf, tmp_path, check_mode=False, pythonpath=COLLECTIONS, **args):
    args.setdefault("endpoint", hf.endpoint)
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode)})
    proc = subprocess.Popen([sys.executable, "-m", MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=module_env(tmp_path, pythonpath))
    proc.stdin.write(payload)
    proc.stdin.close()
    proc.stdin = None  # already sent: communicate() must not touch it
    return proc


def run_module(hf, tmp_path, **args):
    proc = start_module(hf, tmp_path, **args)
    out, err = proc.communicate(timeout=120)
    try:
        return json.loads(out)
    except ValueError:
        pytest.fail(f"module printed no JSON (rc={proc.returncode}): {out!r} {err!r}")


def manifest(path):
    with open(os.path.join(path, hf_snapshot.MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def listing(path):
    return sorted(os.listdir(path))


@pytest.fixture()
def snapshot(tmp_path):
    return str(tmp_path / "models" / "tiny-qwen2")


# -- the server, through the real client ---------------------------------------------------------


def test_hf_server_resolves_branch_tag_and_sha_with_lfs_metadata(hf_server):
    api = HfApi(endpoint=hf_server.endpoint, token=False)
    main_sha, tag_sha = hf_server.sha(MAIN, "main"), hf_server.sha(MAIN, "v1.0")
    assert main_sha != tag_sha
    assert api.model_info(MAIN, revision="main").sha == main_sha
    assert api.model_info(MAIN, revision="v1.0").sha == tag_sha
    info = api.model_info(MAIN, revision=tag_sha, files_metadata=True)
    assert info.sha == tag_sha
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    lfs_path = hf_server.lfs_object(MAIN, weights.lfs.sha256)
    assert weights.size == weights.lfs.size == os.path.getsize(lfs_path) > 1_000_000
    assert sha256_of(lfs_path) == weights.lfs.sha256
    config = next(s for s in info.siblings if s.rfilename == "config.json")
    assert config.lfs is None and config.size > 0 and len(config.blob_id) == 40
    refs = api.list_repo_refs(MAIN)
    assert {(b.name, b.target_commit) for b in refs.branches} == {("main", main_sha)}
    assert {(t.name, t.target_commit) for t in refs.tags} == {("v1.0", tag_sha)}
    tree = {f.path: f for f in api.list_repo_tree(MAIN, revision=tag_sha, recursive=True)}
    assert sorted(tree) == sorted(set(MAIN_FILES) - {"README.md"})
    assert tree["model.safetensors"].lfs.sha256 == weights.lfs.sha256


def test_hf_server_file_headers_and_ranges(hf_server):
    sha = hf_server.sha(MAIN, "main")
    info = HfApi(endpoint=hf_server.endpoint, token=False).model_info(MAIN, revision=sha, files_metadata=True)
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    url = hf_hub_url(MAIN, "model.safetensors", revision="main", endpoint=hf_server.endpoint)
    meta = get_hf_file_metadata(url, token=False)
    assert (meta.commit_hash, meta.etag, meta.size) == (sha, weights.lfs.sha256, weights.size)
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as resp:
        assert resp.headers["X-Linked-Size"] == str(weights.size)
        assert resp.headers["X-Linked-Etag"] == f'"{weights.lfs.sha256}"'
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=100-199"})) as resp:
        assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 100-199/{weights.size}"
        with open(hf_server.lfs_object(MAIN, weights.lfs.sha256), "rb") as f:
            f.seek(100)
            assert resp.read() == f.read(100)


def test_hf_server_errors_are_the_hubs(hf_server, tmp_path):
    api = HfApi(endpoint=hf_server.endpoint, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("gpufleet/no-such-model")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(MAIN, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(MAIN, revision="main~1")  # rev expressions are not refs
    assert api.model_info(GATED).gated == "manual"  # metadata is public, like on the Hub
    fetch = dict(repo_id=GATED, filename="config.json", endpoint=hf_server.endpoint, local_dir=str(tmp_path / "g"),
                 cache_dir=str(tmp_path / "cache"))
    with pytest.raises(GatedRepoError):
        hf_hub_download(**fetch, token=False)
    with pytest.raises(HfHubHTTPError) as wrong:
        hf_hub_download(**fetch, token="hf_wrong")
    assert wrong.value.response.status_code == 401
    assert os.path.getsize(hf_hub_download(**fetch, token=hf_server.token)) > 0


def test_hf_server_access_log_counts_requests_and_never_holds_a_token(hf_server, tmp_path):
    mark = hf_server.log_mark()
    hf_hub_download(GATED, "tokenizer.json", endpoint=hf_server.endpoint, token=hf_server.token,
                    local_dir=str(tmp_path / "g"), cache_dir=str(tmp_path / "cache"))
    assert hf_server.downloads(since=mark) == {"tokenizer.json": 1}
    assert all(r["method"] in ("GET", "HEAD") and r["bytes"].isdigit() for r in hf_server.requests(since=mark))
    for path in (hf_server.access_log, hf_server.stderr_path):
        with open(path, encoding="utf-8") as f:
            assert hf_server.token not in f.read()


# -- the module -------------------------------------------------------------------------------------


def test_hf_model_pinned_sha_download_then_noop(hf_server, tmp_path, snapshot):
    sha = hf_server.sha(MAIN, "main")
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, repo_id=MAIN, revision=sha, path=snapshot)
    assert result["changed"] is True, result
    assert (result["commit_sha"], result["revision"], result["files"]) == (sha, sha, len(MAIN_FILES))
    assert result["downloaded_files"] == MAIN_FILES
    assert listing(snapshot) == sorted(MAIN_FILES + [hf_snapshot.MANIFEST])
    assert hf_server.downloads(since=mark) == {name: 1 for name in MAIN_FILES}
    recorded = manifest(snapshot)
    assert (recorded["repo_id"], recorded["commit_sha"], recorded["bytes"]) == (MAIN, sha, result["bytes"])
    for name in MAIN_FILES:
        path = os.path.join(snapshot, name)
        assert recorded["files"][name]["sha256"] == sha256_of(path)
        assert recorded["files"][name]["size"] == os.path.getsize(path)

    mark = hf_server.log_mark()
    again = run_module(hf_server, tmp_path, repo_id=MAIN, revision=sha, path=snapshot)
    assert again["changed"] is False and again["downloaded_files"] == [] and again["commit_sha"] == sha
    assert [r["path"] for r in hf_server.requests(since=mark)] == [
        f"/api/models/{MAIN}/revision/{sha}?blobs=true"]  # the one metadata request, nothing else


def test_hf_model_tag_is_recorded_as_its_sha_and_update_fetches_only_changes(hf_server, tmp_path, snapshot):
    tag_sha, main_sha = hf_server.sha(MAIN, "v1.0"), hf_server.sha(MAIN, "main")
    result = run_module(hf_server, tmp_path, repo_id=MAIN, revision="v1.0", path=snapshot)
    assert result["changed"] and result["commit_sha"] == tag_sha and result["revision"] == "v1.0"
    assert (manifest(snapshot)["commit_sha"], manifest(snapshot)["revision"]) == (tag_sha, "v1.0")
    with open(os.path.join(snapshot, "generation_config.json")) as f:
        assert json.load(f)["max_new_tokens"] == 64

    mark = hf_server.log_mark()
    update = run_module(hf_server, tmp_path, repo_id=MAIN, revision="main", path=snapshot)
    assert update["changed"] and update["commit_sha"] == main_sha
    assert update["downloaded_files"] == ["README.md", "generation_config.json"]
    assert hf_server.downloads(since=mark) == {"README.md": 1, "generation_config.json": 1}
    with open(os.path.join(snapshot, "generation_config.json")) as f:
        assert json.load(f)["max_new_tokens"] == 128
    assert manifest(snapshot)["commit_sha"] == main_sha


def test_hf_model_allow_and_ignore_patterns(hf_server, tmp_path, snapshot):
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, repo_id=MAIN, revision="v1.0", path=snapshot,
                        allow_patterns=["*.json"], ignore_patterns=["tokenizer*"])
    assert result["downloaded_files"] == ["config.json", "generation_config.json"]
    assert listing(snapshot) == [hf_snapshot.MANIFEST, "config.json", "generation_config.json"]
    assert set(hf_server.downloads(since=mark)) == {"config.json", "generation_config.json"}

    widened = run_module(hf_server, tmp_path, repo_id=MAIN, revision="v1.0", path=snapshot,
                         allow_patterns=["*.json", "*.safetensors"])
    assert widened["downloaded_files"] == ["model.safetensors", "tokenizer.json", "tokenizer_config.json"]

    # Narrowing removes the files the previous snapshot owned, and only those.
    with open(os.path.join(snapshot, "notes.txt"), "w") as f:
        f.write("not the module's")
    narrowed = run_module(hf_server, tmp_path, repo_id=MAIN, revision="v1.0", path=snapshot,
                          allow_patterns=["config.json"])
    assert narrowed["changed"] and narrowed["downloaded_files"] == []
    assert listing(snapshot) == [hf_snapshot.MANIFEST, "config.json", "notes.txt"]
    assert list(manifest(snapshot)["files"]) == ["config.json"]


def test_hf_model_check_mode_reports_and_changes_nothing(hf_server, tmp_path, snapshot):
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, check_mode=True, repo_id=MAIN, revision="v1.0", path=snapshot,
                        allow_patterns=["*.safetensors", "config.json"])
    assert result["changed"] is True
    assert result["downloaded_files"] == ["config.json", "model.safetensors"]
    assert result["downloaded_bytes"] == result["bytes"] > 1_000_000
    assert not os.path.exists(snapshot)
    assert hf_server.downloads(since=mark) == {}


def test_hf_model_interrupted_download_then_rerun_completes(hf_server, hf_server_slow, tmp_path, snapshot):
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    info = HfApi(endpoint=hf_server.endpoint, token=False).model_info(MAIN, revision="v1.0", files_metadata=True)
    weights_info = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    mark = hf_server_slow.log_mark()
    proc = start_module(hf_server_slow, tmp_path, **args)
    try:
        deadline = time.monotonic() + 60
        # The client opens `<...>.<etag>.<unique>.incomplete` right before the GET; the throttled
        # transfer then takes ~7 s: kill it 1 s in.
        while not any(weights_info.lfs.sha256 in p for p in hf_snapshot.orphaned_partials(snapshot)):
            assert proc.poll() is None and time.monotonic() < deadline, "the weights download never started"
            time.sleep(0.05)
        time.sleep(1)
        assert proc.poll() is None, "the download finished before it could be interrupted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    deadline = time.monotonic() + 10
    weights = []
    while not weights:
        assert time.monotonic() < deadline, "the server never logged the interrupted transfer"
        time.sleep(0.1)
        weights = [r for r in hf_server_slow.requests(since=mark)
                   if r["method"] == "GET" and r["path"].endswith("/model.safetensors")]
    assert 0 < int(weights[0]["bytes"]) < weights_info.size  # really cut half-way
    assert not os.path.exists(os.path.join(snapshot, hf_snapshot.MANIFEST))
    staged = listing(snapshot)  # the dead run's own staging dir, nothing in place that could pass for the model
    assert len(staged) == 1 and staged[0].startswith(hf_snapshot.STAGING + "."), staged
    assert hf_snapshot.orphaned_partials(snapshot)

    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, **args)
    assert result["changed"] and "model.safetensors" in result["downloaded_files"]
    assert hf_server.downloads(since=mark).get("model.safetensors") == 1
    recorded = manifest(snapshot)
    assert recorded["commit_sha"] == hf_server.sha(MAIN, "v1.0")
    for name, record in recorded["files"].items():
        assert sha256_of(os.path.join(snapshot, name)) == record["sha256"]
    assert hf_snapshot.staging_dirs(snapshot) == []


def test_hf_model_truncated_file_without_manifest_is_refetched(hf_server, tmp_path, snapshot):
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    good = run_module(hf_server, tmp_path, **args)
    weights = os.path.join(snapshot, "model.safetensors")
    os.truncate(weights, 1000)
    os.unlink(os.path.join(snapshot, hf_snapshot.MANIFEST))
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, **args)
    assert result["changed"] and result["downloaded_files"] == ["model.safetensors"]
    assert hf_server.downloads(since=mark) == {"model.safetensors": 1}  # the others were re-hashed, kept
    assert sha256_of(weights) == manifest(snapshot)["files"]["model.safetensors"]["sha256"]
    assert result["bytes"] == good["bytes"]


def test_hf_model_corruption_is_found_by_verify(hf_server, tmp_path, snapshot):
    args = dict(repo_id=MAIN, revision="v1.0", path=snapshot)
    run_module(hf_server, tmp_path, **args)
    weights = os.path.join(snapshot, "model.safetensors")
    good = sha256_of(weights)
    with open(weights, "r+b") as f:  # same size, one byte flipped
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    # A rewrite changes the file's stat, which a default run checks (test_hf_model_concurrent.py); bit rot
    # below the filesystem does not: recording the stat as it is now stands for it.
    hf_snapshot.write_manifest(snapshot, manifest(snapshot))
    assert run_module(hf_server, tmp_path, **args)["changed"] is False  # trusted by stat without verify
    result = run_module(hf_server, tmp_path, verify=True, **args)
    assert result["changed"] and result["downloaded_files"] == ["model.safetensors"]
    assert sha256_of(weights) == good


def test_hf_model_gated_repo_with_token_and_owner_mode(hf_server, tmp_path, snapshot):
    args = dict(repo_id=GATED, path=snapshot, token=hf_server.token, owner="root", group="root", mode="0750")
    result = run_module(hf_server, tmp_path, **args)
    assert result["changed"] and result["commit_sha"] == hf_server.sha(GATED)
    assert oct(os.stat(snapshot).st_mode & 0o777) == "0o750"
    assert hf_server.token not in json.dumps(result)
    assert run_module(hf_server, tmp_path, **args)["changed"] is False


@pytest.mark.parametrize("case, args, expected", [
    ("unknown repo", dict(repo_id="gpufleet/no-such-model"), "repository 'gpufleet/no-such-model' not found"),
    ("unknown revision", dict(revision="v9.9"), "revision 'v9.9' not found"),
    ("gated without token", dict(repo_id=GATED, revision="main"), "inventory variable model_fetch_hf_token"),
    ("wrong token", dict(repo_id=GATED, revision="main", token="hf_definitelyWrongToken42"), "token was rejected"),
    ("disk too small", dict(min_free_bytes=2 ** 62), "not enough disk space"),
    ("empty selection", dict(allow_patterns=["*.gguf"]), "select none of the"),
])
def test_hf_model_bad_input_is_a_clear_error_and_writes_nothing(hf_server, tmp_path, snapshot, case, args, expected):
    args = dict(dict(repo_id=MAIN, revision="v1.0", path=snapshot), **args)
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, **args)
    assert result.get("failed") is True, result
    assert expected in result["msg"], result["msg"]
    assert "hf_definitelyWrongToken42" not in json.dumps(result)
    assert not os.path.exists(snapshot)
    assert hf_server.downloads(since=mark) == {}


def test_hf_model_path_not_writable(hf_server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_module(hf_server, tmp_path, repo_id=DRAFT, path=str(blocker / "model"))
    assert result.get("failed") and "is not writable" in result["msg"], result


def test_hf_model_without_huggingface_hub_says_so(hf_server, tmp_path, snapshot):
    shadow = tmp_path / "shadow" / "huggingface_hub"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    result = run_module(hf_server, tmp_path, repo_id=MAIN, path=snapshot,
                        pythonpath=f"{shadow.parent}{os.pathsep}{COLLECTIONS}")
    assert result.get("failed") and "Failed to import the required Python library (huggingface_hub)" in result["msg"]


def test_hf_model_through_ansible_never_prints_the_token(hf_server, tmp_path, snapshot):
    args = dict(repo_id=GATED, revision="main", path=snapshot, endpoint=hf_server.endpoint, token=hf_server.token)
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible")
    env = dict(module_env(tmp_path), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_HOME=str(tmp_path / "ansible"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_NOCOLOR="1")
    env.pop("PYTHONPATH")
    proc = subprocess.run(
        [ansible, "localhost", "-i", "localhost,", "-c", "local", "-vvvv", "-m", "gpufleet.serving.hf_model",
         "-a", json.dumps(args), "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert '"changed": true' in output and hf_server.sha(GATED) in output
    assert '"token": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in output  # it was passed, and masked
    assert hf_server.token not in output
    assert manifest(snapshot)["repo_id"] == GATED


# -- pure logic ---------------------------------------------------------------------------------------


def test_hf_snapshot_escape_pattern_matches_only_the_name():
    from fnmatch import fnmatch
    name = "weights[1]*?.bin"
    assert fnmatch(name, hf_snapshot.escape_pattern(name))
    assert not fnmatch("weights1xy.bin", hf_snapshot.escape_pattern(name))


def test_hf_snapshot_plan_hashes_unrecorded_files(tmp_path):
    data = b"hello"
    blob_id = hashlib.sha1(b"blob 5\0" + data).hexdigest()
    (tmp_path / "a.txt").write_bytes(data)
    expected = {"a.txt": {"size": 5, "blob_id": blob_id, "lfs_sha256": None},
                "b.bin": {"size": 3, "blob_id": "0" * 40, "lfs_sha256": "f" * 64}}
    state = hf_snapshot.plan(str(tmp_path), expected, "c" * 40)
    assert state["fetch"] == ["b.bin"] and not state["complete"]
    assert state["records"]["a.txt"]["sha256"] == hashlib.sha256(data).hexdigest()
    hf_snapshot.write_manifest(str(tmp_path), hf_snapshot.build_manifest("o/r", "main", "c" * 40, state["records"]))
    del expected["b.bin"]
    assert hf_snapshot.plan(str(tmp_path), expected, "c" * 40)["complete"]
    assert not hf_snapshot.plan(str(tmp_path), expected, "d" * 40)["complete"]  # other commit: re-record


def test_hf_model_state_resolved_pins_a_tag_without_writing(hf_server, tmp_path):
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, repo_id=MAIN, revision="v1.0", state="resolved")
    assert result["changed"] is False
    assert result["commit_sha"] == hf_server.sha(MAIN, "v1.0") != hf_server.sha(MAIN, "main")
    assert result["files"] == len(MAIN_FILES) - 1  # README.md came with the second commit
    assert result["gated"] is False and result["bytes"] > 3_000_000
    # Only config.json is read (preflight plans every host from it); no weight file, nothing kept.
    assert hf_server.downloads(since=mark) == {"config.json": 1}
    assert not any(tmp_path.iterdir()) or sorted(p.name for p in tmp_path.iterdir()) == ["hf-home"]


def test_hf_model_state_resolved_returns_what_preflight_plans_from(hf_server, tmp_path):
    """config.json at the resolved commit and the weight bytes the engines load, with no download of weights."""
    result = run_module(hf_server, tmp_path, repo_id=MAIN, revision="main", state="resolved")
    api = HfApi(endpoint=hf_server.endpoint)
    config = json.loads(open(hf_hub_download(MAIN, "config.json", endpoint=hf_server.endpoint,
                                             cache_dir=str(tmp_path / "c")), encoding="utf-8").read())
    assert result["config"] == config and config["architectures"]
    sizes = {s.rfilename: s.size for s in api.model_info(MAIN, files_metadata=True).siblings}
    assert result["weights_bytes"] == sizes["model.safetensors"]


def test_hf_model_state_resolved_gated_without_token_has_no_config(hf_server, tmp_path):
    mark = hf_server.log_mark()
    result = run_module(hf_server, tmp_path, repo_id=GATED, revision="main", state="resolved")
    assert not result.get("failed"), result
    assert result["config"] is None and result["gated"] is True
    assert hf_server.downloads(since=mark) == {}


def test_hf_model_state_present_needs_a_path(hf_server, tmp_path):
    result = run_module(hf_server, tmp_path, repo_id=MAIN)
    assert result["failed"] and "path" in result["msg"]
