"""The rollout report (fleet_summary's rollout columns) and the Prometheus file_sd writer."""
import json

from ansible_collections.gpufleet.serving.plugins.filter.fleet import FilterModule
from gpu_fixtures import gpu_facts

FILTERS = FilterModule().filters()
SHA = "0bd5fd24e3dc83924a8c235f3824371e3a6896e9"


def release(engine="sglang", version="0.5.23", image="img:1"):
    return {"id": "c" * 12, "image": image, "labels": {
        "gpufleet.engine": engine, "gpufleet.engine_version": version, "gpufleet.model_sha": SHA}}


def host(card="h100", healthy=True, rollout=None, port=30000, engine="sglang", ip="10.0.0.1"):
    hv = {"ansible_host": ip, "gpufleet_gpu": gpu_facts(card), "model_fetch_repo_id": "org/model",
          "gpufleet_model": {"repo_id": "org/model"},
          "model_fetch_result": {"commit_sha": SHA},
          "engine_plan": {"engine": engine, "engine_version": "0.5.23"},
          "engine_health_result": {"healthy": healthy, "time_to_healthy_s": 5.0, "ttft_ms": 12.5, "tokens_per_s": 96.0},
          "engine_deployments": [{"name": "gpufleet-engine", "port": port, "gpu_label": "1x GPU",
                                  "plan": {"engine": engine, "engine_version": "0.5.23"}}]}
    if rollout is not None:
        hv["engine_rollout"] = rollout
    return hv


def record(before, after, replaced=True, rolled_back=False, cause=None):
    return {"instances": [{"name": "gpufleet-engine", "before": before, "after": after, "replaced": replaced}],
            "rolled_back": rolled_back, "cause": cause}


def rows(lines):
    return {line.split()[0]: line for line in lines[1:] if not line.split()[0].endswith(":")}


def test_existing_columns_stay_and_rollout_columns_follow():
    hv = {"a": host(rollout=record(release(), release(), replaced=False))}
    lines = FILTERS["fleet_summary"](hv, ["a"])
    header = lines[0].split()
    assert header == ["host", "gpu", "engine", "model", "revision", "health", "ready_s", "ttft_ms", "tok/s",
                      "before->after", "rollout"]
    row = lines[1]
    assert row.startswith("a ") and "healthy" in row and "0bd5fd24e3dc" in row and "12.5" in row
    assert row.split()[-2:] == ["sglang-0.5.23@0bd5fd24e3dc", "unchanged"]


def test_each_rollout_outcome_is_named_and_causes_follow_the_table():
    hv = {
        "updated": host(rollout=record(release(version="0.5.22"), release())),
        "back": host(rollout=record(release(), release(), rolled_back=True,
                                    cause="health: exited; rolled back to the previous container (gpufleet-engine: img:1), now healthy")),
        "first": host(healthy=False, rollout=record(None, None, cause="health: exited; no previous container")),
        "gone": host(),
        "later": {"gpufleet_gpu": gpu_facts("l40s")},
    }
    lines = FILTERS["fleet_summary"](hv, list(hv), lost=["gone"])
    by_host = rows(lines)
    assert by_host["updated"].split()[-2:] == ["sglang-0.5.22@0bd5fd24e3dc->sglang-0.5.23@0bd5fd24e3dc", "updated"]
    assert by_host["back"].split()[-1] == "ROLLED-BACK" and "healthy" in by_host["back"]
    assert by_host["first"].split()[-1] == "FAILED" and "none" in by_host["first"]
    assert by_host["gone"].split()[-1] == "UNREACHABLE/FAILED"
    assert "not reached" in by_host["later"] and by_host["later"].split()[-1] == "-"
    assert lines[-2:] == ["back: health: exited; rolled back to the previous container (gpufleet-engine: img:1), now healthy",
                          "first: health: exited; no previous container"]


def test_rollout_cells_have_no_single_spaces():
    """The YAML callback folds long lines at single spaces: the columns after ~80 characters must have none."""
    hv = {"a": host(rollout=record(release(), release(version="0.6.0")))}
    cells = FILTERS["fleet_summary"](hv, ["a"])[1].split("  ")
    assert all(" " not in cell.strip() for cell in cells[-2:])


def test_file_sd_lists_every_engine_with_labels():
    hv = {"a": host(ip="10.0.0.1"), "b": host(card="rtx4000", engine="vllm", port=8000, ip="10.0.0.2"),
          "c": {"gpufleet_gpu": gpu_facts("l40s")}}
    hv["a"]["dcgm_exporter_deployed"] = {"name": "gpufleet-dcgm-exporter", "port": 9400}
    groups = FILTERS["prometheus_file_sd"](hv, ["a", "b", "c"])
    assert groups == [
        {"targets": ["10.0.0.1:30000"], "labels": {"host": "a", "engine": "sglang", "engine_version": "0.5.23",
                                                   "model": "org/model", "gpu": "1x GPU", "container": "gpufleet-engine",
                                                   "exporter": "engine"}},
        {"targets": ["10.0.0.1:9400"], "labels": {"host": "a", "gpu": "1x NVIDIA H100 80GB HBM3",
                                                  "container": "gpufleet-dcgm-exporter", "exporter": "dcgm"}},
        {"targets": ["10.0.0.2:8000"], "labels": {"host": "b", "engine": "vllm", "engine_version": "0.5.23",
                                                  "model": "org/model", "gpu": "1x GPU", "container": "gpufleet-engine",
                                                  "exporter": "engine"}},
    ]
    # The file_sd format: a JSON list of {targets: [str], labels: {str: str}}.
    for group in json.loads(json.dumps(groups)):
        assert set(group) == {"targets", "labels"}
        assert all(isinstance(v, str) for v in group["labels"].values())


def test_file_sd_of_a_limited_run_keeps_the_rest_of_the_fleet():
    """--limit a: b keeps the targets the file had for it; c, gone from the inventory, is dropped."""
    old = FILTERS["prometheus_file_sd"]({"a": host(port=1), "b": host(ip="10.0.0.2"), "c": host(ip="10.0.0.3")},
                                        ["a", "b", "c"])
    groups = FILTERS["prometheus_file_sd"]({"a": host(port=30001)}, ["a"], previous=json.dumps(old),
                                           inventory_hosts=["a", "b"])
    assert [(g["labels"]["host"], g["targets"]) for g in groups] == [("a", ["10.0.0.1:30001"]), ("b", ["10.0.0.2:30000"])]
    assert FILTERS["prometheus_file_sd"]({"a": host()}, ["a"], previous="not json", inventory_hosts=["a", "b"]) == \
        FILTERS["prometheus_file_sd"]({"a": host()}, ["a"])


def test_file_sd_of_a_limited_run_that_changes_nothing_is_the_same_file():
    """Found on the lab: `--limit turing-1,...` wrote the hosts outside the run first, a change on every such run."""
    fleet = {"a": host(ip="10.0.0.1"), "b": host(ip="10.0.0.2"), "c": host(ip="10.0.0.3")}
    full = FILTERS["prometheus_file_sd"](fleet, ["a", "b", "c"], inventory_hosts=["a", "b", "c"])
    for limit in (["a"], ["b"], ["c", "a"]):
        limited = FILTERS["prometheus_file_sd"]({h: fleet[h] for h in limit}, limit, previous=json.dumps(full),
                                                inventory_hosts=["a", "b", "c"])
        assert limited == full, limit
