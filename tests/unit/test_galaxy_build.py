"""`ansible-galaxy collection build` from the working tree ships the collection and nothing of a
working checkout: after dirty files are left where the lab, the benchmarks, the tests and a careless
hand would leave them (all under names unique to this test, removed afterwards), the tarball holds
none of them, nor the self-linking collections/ directory, and holds everything Galaxy shows."""
import json
import os
import subprocess
import sys
import tarfile
import uuid

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GALAXY = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
TAG = "galaxy-build-test-" + uuid.uuid4().hex[:8]
DIRTY = [
    f".cache/lab/fleets/{TAG}/hf/gated-token",  # a lab fleet's state: its HF token (lab/labctl.py)
    f".cache/lab/fleets/{TAG}/ssh/id_ed25519",  # ... and its SSH key
    f".cache/{TAG}/facts/host",  # fact cache, wheels, images
    f"bench/results/{TAG}/results.json",  # bench/*/run.py
    f".venv-{TAG}/bin/python",
    f"{TAG}.secret",
    f"lab/{TAG}.token",
    f"tests/output/{TAG}.xml",
    f".pytest_cache/{TAG}",
    f"tests/unit/.pytest_cache/{TAG}",
    f"plugins/module_utils/__pycache__/{TAG}.cpython-311.pyc",
    f".ansible/{TAG}",
    f"gpufleet-serving-{TAG}.tar.gz",
]
NEVER = (".cache/", ".venv", ".git/", ".ci/", "collections/", "bench/results/", ".pytest_cache/", ".ansible/")


def roles():
    return sorted(os.listdir(os.path.join(REPO, "roles")))


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    # Other runs may use the same tree (scripts/test.sh brings the lab up beside the unit tests): only
    # this test's own files and directories are removed; a shared one it had to make (.cache/lab, all
    # git-ignored) stays, empty, since a lab starting meanwhile may be about to write there.
    files, dirs = [], []
    try:
        for rel in DIRTY:
            path = os.path.join(REPO, rel)
            missing = []
            parent = os.path.dirname(path)
            while not os.path.exists(parent):
                missing.insert(0, parent)
                parent = os.path.dirname(parent)
            for d in missing:
                os.makedirs(d, exist_ok=True)
                if TAG in os.path.relpath(d, REPO):
                    dirs.append(d)
            with open(path, "w") as f:
                f.write("hf_dirty_" + TAG + "\n")
            files.append(path)
        out = tmp_path_factory.mktemp("galaxy-build")
        run = subprocess.run([GALAXY, "collection", "build", "--output-path", str(out)], cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        for path in files:
            os.remove(path)
        for d in reversed(dirs):
            os.rmdir(d)
    [name] = os.listdir(out)
    with tarfile.open(out / name) as tar:
        return {m.name: m for m in tar.getmembers()}, json.load(tar.extractfile("MANIFEST.json"))


def test_no_dirty_file_and_no_checkout_state(tarball):
    members, _unused = tarball
    assert [rel for rel in DIRTY if rel in members] == []
    assert sorted(n for n in members if n.startswith(NEVER) or TAG in n) == []
    assert "changelogs/.plugin-cache.yaml" not in members
    assert [n for n, m in members.items() if m.issym() or m.islnk()] == []


def test_what_galaxy_shows_is_there(tarball):
    members, _unused = tarball
    want = ["LICENSE", "README.md", "MANIFEST.json", "FILES.json", "meta/runtime.yml", "CHANGELOG.rst",
            "changelogs/changelog.yaml"]
    want += [f"roles/{r}/{f}" for r in roles() for f in ("README.md", "meta/main.yml", "meta/argument_specs.yml")]
    assert [n for n in want if n not in members] == []


def test_manifest_says_what_galaxy_yml_says(tarball):
    _unused, manifest = tarball
    with open(os.path.join(REPO, "galaxy.yml"), encoding="utf-8") as f:
        galaxy = yaml.safe_load(f)
    info = manifest["collection_info"]
    assert info["version"] == galaxy["version"] and info["license"] == ["Apache-2.0"]
    assert info["repository"].startswith("https://") and info["issues"].startswith(info["repository"])
    assert {"tools", "infrastructure"} & set(info["tags"])
