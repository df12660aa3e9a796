"""The converge stamp: what it fingerprints, when a host counts as converged, and the module end to end."""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.gpufleet.serving.plugins.filter.converge import FilterModule
from ansible_collections.gpufleet.serving.plugins.filter.fleet import FilterModule as FleetFilters
from ansible_collections.gpufleet.serving.plugins.module_utils import converge_stamp as stamps
from ansible_collections.gpufleet.serving.plugins.modules import converge_stamp
from gpu_fixtures import gpu_facts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAKE = os.path.join(REPO, "lab", "fake-nvidia-smi", "nvidia-smi")
FILTERS = FilterModule().filters()
NOW = 1_800_000_000
ENGINE = {"id": "abc", "image": "sha256:1", "running": True, "restart_count": 0}


def stamp(**changes):
    base = stamps.build("d1", gpu_facts("h100"), {"files": ["/f"], "trees": ["/m"], "containers": ["e"]},
                        {"files": {"/f": "sha-f"}, "trees": {"/m": "sig-m"}, "containers": {"e": dict(ENGINE)}},
                        {"engine_plan": {"engine": "sglang"}}, NOW - 60)
    base.update(changes)
    return base


# --- stamp_reasons: the cheap checks ------------------------------------------------------------------

def test_a_matching_stamp_gives_no_reason():
    assert stamps.stamp_reasons(stamp(), "d1", gpu_facts("h100"), NOW, 86400) == []


def test_no_stamp_and_foreign_stamp():
    assert "first run" in stamps.stamp_reasons(None, "d1", gpu_facts("h100"), NOW, 86400)[0]
    assert "another format" in stamps.stamp_reasons({"schema": 99}, "d1", gpu_facts("h100"), NOW, 86400)[0]


def test_changed_inputs_are_a_reason():
    assert stamps.stamp_reasons(stamp(), "d2", gpu_facts("h100"), NOW, 86400) == [
        "inputs changed (inventory values, collection content or pinned model commit)"]


def test_a_new_driver_is_named():
    reasons = stamps.stamp_reasons(stamp(), "d1", gpu_facts("h100", driver="590.10.01"), NOW, 86400)
    assert len(reasons) == 1 and "driver_version 580.95.05 -> 590.10.01" in reasons[0]


def test_an_old_stamp_expires_unless_max_age_is_0():
    old = stamp(recorded_at=NOW - 90000)
    assert "more than max_age=86400" in stamps.stamp_reasons(old, "d1", gpu_facts("h100"), NOW, 86400)[0]
    assert stamps.stamp_reasons(old, "d1", gpu_facts("h100"), NOW, 0) == []


# --- live_reasons: what the roles made ----------------------------------------------------------------

def live(**changes):
    base = {"files": {"/f": "sha-f"}, "trees": {"/m": "sig-m"}, "containers": {"e": dict(ENGINE)}}
    base.update(changes)
    return base


def test_matching_fingerprints_give_no_reason():
    assert stamps.live_reasons(stamp(), live()) == []


@pytest.mark.parametrize("changes, reason", [
    (dict(files={"/f": "other"}), "file /f changed"),
    (dict(files={"/f": None}), "file /f is missing"),
    (dict(trees={"/m": "other"}), "model snapshot /m changed"),
    (dict(containers={"e": None}), "container e is gone"),
    (dict(containers={"e": dict(ENGINE, running=False)}), "container e is not running"),
    (dict(containers={"e": dict(ENGINE, id="new")}), "container e was replaced outside this collection"),
    (dict(containers={"e": dict(ENGINE, image="sha256:2")}), "container e runs another image"),
    (dict(containers={"e": dict(ENGINE, restart_count=2)}), "container e restarted 2 times since the last run"),
])
def test_each_kind_of_drift_names_itself(changes, reason):
    assert stamps.live_reasons(stamp(), live(**changes)) == [reason]


def test_health_failures_are_reasons():
    answers = {"http://a": (True, "GET /health -> 200"), "http://b": (False, "GET /health -> no answer")}
    assert stamps.health_reasons(["http://a", "http://b"], answers.get) == [
        "engine http://b is not healthy: GET /health -> no answer"]


def test_same_state_ignores_time_and_kept_facts():
    other = stamp(recorded_at=NOW, facts={"engine_health_result": {"ttft_ms": 9}})
    assert stamps.same_state(stamp(), other)
    assert not stamps.same_state(stamp(), stamp(digest="d2"))
    assert not stamps.same_state(None, stamp())


def test_tree_signature_follows_names_sizes_and_times(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "sub" / "config.json").write_text("{}")
    first = stamps.tree_signature(str(tmp_path))
    assert stamps.tree_signature(str(tmp_path)) == first
    (tmp_path / "a.safetensors").write_bytes(b"x" * 9)  # truncated
    assert stamps.tree_signature(str(tmp_path)) != first
    second = stamps.tree_signature(str(tmp_path))
    (tmp_path / "extra.bin").write_bytes(b"")
    assert stamps.tree_signature(str(tmp_path)) != second
    assert stamps.tree_signature(str(tmp_path / "absent")) is None


# --- the filters that feed it ---------------------------------------------------------------------------

def healthy_host():
    return {
        "gpufleet_gpu": gpu_facts("h100"),
        "gpufleet_model": {"repo_id": "org/m", "dir": "/srv/models/m", "commit_sha": "s" * 40,
                           "extra_models": [{"repo_id": "org/draft", "dir": "/srv/models/d"}]},
        "engine_plan": {"engine": "sglang"},
        "engine_deployments": [{"name": "gpufleet-engine", "port": 30000}, {"name": "gpufleet-engine-1", "port": 30001}],
        "engine_health_result": {"healthy": True, "ttft_ms": 12.0, "changed": False, "item": {"port": 30000}},
        "engine_rollout": {"instances": [{"name": "gpufleet-engine", "before": None, "after": {"image": "i"},
                                          "replaced": True}], "rolled_back": False, "cause": None},
        "dcgm_exporter_deployed": {"name": "dcgm-exporter", "port": 9400},
    }


def test_converge_record_names_what_the_roles_made():
    record = FILTERS["converge_record"](healthy_host())
    assert record["gpu"] == gpu_facts("h100")
    assert record["files"] == ["/etc/docker/daemon.json"]
    assert record["trees"] == ["/srv/models/m", "/srv/models/d"]
    assert record["containers"] == ["gpufleet-engine", "gpufleet-engine-1", "dcgm-exporter"]
    assert record["health"] == ["http://127.0.0.1:30000", "http://127.0.0.1:30001"]
    facts = record["facts"]
    assert facts["engine_health_result"] == {"healthy": True, "ttft_ms": 12.0}  # the report, not the task result
    assert facts["engine_rollout"]["instances"] == [
        {"name": "gpufleet-engine", "before": {"image": "i"}, "after": {"image": "i"}, "replaced": False}]
    assert facts["model_fetch_result"] == {"commit_sha": "s" * 40, "dir": "/srv/models/m"}


def test_converged_hosts_reads_this_runs_check_only():
    hostvars = {"a": {"preflight_converge": {"converged": True}},
                "b": {"preflight_converge": {"converged": False}},
                "c": {"gpufleet_converge": {"converged": True}}}  # a cached fact from an earlier run
    assert FILTERS["converged_hosts"](["a", "b", "c"], hostvars) == ["a"]


def test_converge_report_lists_reasons():
    hostvars = {"a": {"gpufleet_converge": {"converged": True}},
                "b": {"gpufleet_converge": {"converged": False, "reasons": ["x", "y"]}}}
    assert FILTERS["converge_report"](hostvars, ["a", "b"]) == [
        "1 of 2 hosts are as their last run left them and skip the roles", "b: x; y"]


def test_converge_digests_join_inputs_and_each_hosts_pinned_commit():
    fleet = FleetFilters().filters()
    model = {"model_fetch_repo_id": "org/m", "model_fetch_revision": "main", "model_fetch_hf_endpoint": "http://hub"}
    hostvars = {"a": model, "b": dict(model, model_fetch_revision="v2"), "c": {}}
    commits = {fleet["model_key"]("org/m", "main", "http://hub"): "1" * 40}
    assert fleet["converge_digests"](hostvars, {"a": "da", "b": "db", "c": "dc"}, commits) == {
        "a": "da:" + "1" * 40,
        "b": "db:",  # its revision was not resolved (offline): no commit part
        "c": "dc:"}  # no model
    # A branch that moved resolves to another commit: the digest changes, the host takes the full run.
    moved = {fleet["model_key"]("org/m", "main", "http://hub"): "2" * 40}
    assert fleet["converge_digests"](hostvars, {"a": "da"}, moved)["a"] == "da:" + "2" * 40


# --- the module, in process, against the fake nvidia-smi and a local health endpoint --------------------

class Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(Health.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def engine():
    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Health.status = 200
    yield "http://127.0.0.1:%d" % server.server_port
    server.shutdown()


@pytest.fixture
def gpu_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUFLEET_FAKE_GPU_DIR", os.path.join(REPO, "lab", "gpus"))
    monkeypatch.setenv("GPUFLEET_FAKE_GPU_PROFILE", "h100-80gb-hbm3")
    monkeypatch.setenv("GPUFLEET_FAKE_STATE_DIR", str(tmp_path / "fake-state"))


def run_main(capsys, check_mode=False, **args):
    if check_mode:
        args["_ansible_check_mode"] = True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ansible.module_utils._internal.is_controller", False)
        with patch_module_args(args), pytest.raises(SystemExit) as done:
            converge_stamp.main()
    return done.value.code, json.loads(capsys.readouterr().out)


def test_module_records_then_finds_the_host_converged_then_drifted(tmp_path, capsys, engine, gpu_env):
    path, model = str(tmp_path / "state" / "converged.json"), tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = tmp_path / "daemon.json"
    config.write_text('{"runtimes": {}}')
    common = dict(digest="d1", path=path, nvidia_smi_path=FAKE)

    code, first = run_main(capsys, **common)
    assert code == 0 and first["converged"] is False and "first run" in first["reasons"][0]
    gpu = first["ansible_facts"]["gpufleet_gpu"]
    assert gpu["driver_version"] == "580.159.04"

    record = {"gpu": gpu, "files": [str(config)], "trees": [str(model)], "containers": [], "health": [engine],
              "facts": {"engine_plan": {"engine": "sglang"}}}
    code, written = run_main(capsys, state="present", record=record, **common)
    assert code == 0 and written["stamp_written"] is True and written["state_changed"] is True
    assert written["changed"] is False  # bookkeeping, not a change of the host
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    code, again = run_main(capsys, state="present", record=record, **common)
    assert again["state_changed"] is False  # the same state recorded again

    code, checked = run_main(capsys, **common)
    assert checked["converged"] is True and checked["reasons"] == []
    facts = checked["ansible_facts"]
    assert facts["engine_plan"] == {"engine": "sglang"} and facts["gpufleet_converge"]["converged"] is True
    assert facts["engine_deployments"] is None  # not kept: reset, never taken from an earlier run

    other = {**common, "digest": "d2"}
    code, other_inputs = run_main(capsys, **other)
    assert other_inputs["converged"] is False and other_inputs["ansible_facts"]["engine_plan"] is None

    Health.status = 503
    code, unhealthy = run_main(capsys, **common)
    assert unhealthy["converged"] is False and "is not healthy" in unhealthy["reasons"][0]
    Health.status = 200

    config.write_text('{"runtimes": {"nvidia": {}}}')
    code, drifted = run_main(capsys, **common)
    assert drifted["reasons"] == ["file %s changed" % config]

    code, off = run_main(capsys, **dict(common, enabled=False))
    assert off["converged"] is False and off["reasons"] == ["fast path off (preflight_fast_path=false)"]


def test_module_check_mode_writes_no_stamp(tmp_path, capsys, gpu_env):
    path = str(tmp_path / "converged.json")
    code, result = run_main(capsys, check_mode=True, state="present", digest="d1", path=path,
                            record={"gpu": {}, "files": [], "trees": [], "containers": [], "health": []})
    assert code == 0 and result["stamp_written"] is False and not os.path.exists(path)


def test_module_gpu_required_fails_without_driver(tmp_path, capsys, gpu_env):
    code, result = run_main(capsys, digest="d1", path=str(tmp_path / "s.json"),
                            nvidia_smi_path=str(tmp_path / "absent"), gpu_required=True)
    assert code == 1 and "GPU required but state is no_driver" in result["msg"]
