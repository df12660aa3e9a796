"""The one atomic JSON writer behind the run lock, the convergence stamp and the snapshot manifest."""
import json
import os
import stat

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import atomic_file


def test_writes_json_with_the_mode_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_file.write_json(str(target), {"b": 1, "a": [2]}, mode=0o600)
    assert json.loads(target.read_text()) == {"a": [2], "b": 1}
    assert target.read_text().endswith("\n")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_keeps_the_old_content_and_cleans_up(tmp_path):
    target = tmp_path / "state.json"
    atomic_file.write_json(str(target), {"old": True})
    with pytest.raises(TypeError):
        atomic_file.write_json(str(target), {"new": object()})   # not JSON: fails mid-write
    assert json.loads(target.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["state.json"]


def test_replacing_renames_a_new_file_over_the_old(tmp_path):
    target = tmp_path / "state.json"
    atomic_file.write_json(str(target), {"n": 1})
    first = os.stat(target).st_ino
    atomic_file.write_json(str(target), {"n": 2}, indent=2)
    assert json.loads(target.read_text()) == {"n": 2}
    assert os.stat(target).st_ino != first      # a new file renamed over the old: readers never see a torn one
