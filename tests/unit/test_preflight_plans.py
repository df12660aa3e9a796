"""Preflight plans every host before any host changes (filters resolved_models and engine_plan_errors):
the inputs that used to fail minutes into the run, in the engine role, are reported from preflight."""
import pytest

from ansible_collections.gpufleet.serving.plugins.filter.fleet import FilterModule as FleetFilters
from ansible_collections.gpufleet.serving.plugins.filter.preflight import FilterModule
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import estimate_weights, model_dims
from gpu_fixtures import gpu_facts, model

FILTERS = FilterModule().filters()
ERRORS = FILTERS["engine_plan_errors"]


def tiny(name="Qwen2.5-0.5B-Instruct"):
    m = model(name, path="/models/model", host_path="/models/model")
    m["weights_bytes"] = estimate_weights(model_dims(m["config"]))
    return m


def errors(facts, instances=None, **kw):
    kw.setdefault("engine", "sglang")
    return ERRORS(facts, instances, model=kw.pop("model", tiny()), host="node-1", secrets_dir="/etc/gf", **kw)


def test_a_host_that_plans_has_no_error():
    assert errors(gpu_facts("h100", 2)) == []
    assert errors(gpu_facts("l40s", 1), engine="vllm") == []


@pytest.mark.parametrize("case, kwargs, expected", [
    ("tensor parallel larger than the GPUs", dict(overrides={"--tp-size": 4}), "--tp-size"),
    ("memory fraction out of range", dict(overrides={"--mem-fraction-static": 1.5}), "--mem-fraction-static"),
    ("a removed flag", dict(overrides={"--enable-flashinfer": True}), "--enable-flashinfer"),
    ("an engine version the table lacks", dict(engine_version="0.0.1"), "engine_version"),
    ("a GPU index the host lacks", dict(instances=[{"name": "a", "gpus": [7]}]), "7"),
    ("two instances on one port", dict(instances=[{"name": "a", "gpus": [0], "port": 9000},
                                                  {"name": "b", "gpus": [1], "port": 9000}]), "port"),
])
def test_each_bad_input_is_one_message_naming_the_host(case, kwargs, expected):
    instances = kwargs.pop("instances", None)
    found = errors(gpu_facts("h100", 2), instances, **kwargs)
    assert len(found) == 1, case
    assert "node-1" in found[0] and expected in found[0], found


def test_a_model_too_big_for_the_gpus_is_reported():
    found = errors(gpu_facts("rtx4000", 1), engine="vllm", model=tiny("Qwen3-14B"))
    assert len(found) == 1 and "node-1" in found[0]


def test_resolved_models_keys_match_the_hosts_model_key():
    key = FleetFilters().filters()["model_key"]("org/m", "v1", "http://hub")
    results = [
        {"item": {"key": key}, "commit_sha": "a" * 40, "config": {"architectures": ["X"]}, "weights_bytes": 10},
        {"item": {"key": "gated|main|"}, "commit_sha": "b" * 40, "config": None, "weights_bytes": 5},
    ]
    assert FILTERS["resolved_models"](results) == {key: {"config": {"architectures": ["X"]}, "weights_bytes": 10}}
    assert FILTERS["resolved_models"](None) == {}
