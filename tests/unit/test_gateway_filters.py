"""Which engines sit behind which gateway, the inputs the gateway play refuses, and the rollout's capacity
guard (plugins/filter/gateway.py), on hostvars shaped like the rollout leaves them."""
import json

import pytest

from ansible_collections.gpufleet.serving.plugins.filter import gateway as gw

KEY = "k-1"


def engine_host(ip, name="qwen3", ports=(30000,), healthy=True, key=KEY):
    return {"ansible_host": ip, "engine_served_model_name": name, "engine_api_key": key,
            "engine_deployments": [{"port": p} for p in ports], "engine_health_result": {"healthy": healthy}}


def fleet():
    return {
        "h1": engine_host("10.0.0.1"),
        "h2": engine_host("10.0.0.2", ports=(30001, 30002)),
        "h3": {"ansible_host": "10.0.0.3", "engine_served_model_name": "qwen3", "engine_api_key": KEY},  # unreached
        "h4": engine_host("10.0.0.4", healthy=False),
        "other": engine_host("10.0.0.9", name="llama"),
        "gw": {"ansible_host": "10.0.0.100", "gateway_model": "qwen3", "gateway_api_key": KEY, "gateway_port": 30080,
               "gateway_metrics_port": 29000, "gateway_policy": "cache_aware", "gateway_container_name": "gpufleet-gateway"},
        "gw-llama": {"gateway_model": "llama", "gateway_api_key": KEY},
    }


GPU_HOSTS = ["h1", "h2", "h3", "h4", "other"]


def test_backends_are_the_healthy_instances_of_the_model_and_unknown_hosts_are_kept():
    backends = gw.gateway_backends(fleet(), GPU_HOSTS, "qwen3")
    assert backends == {"hosts": ["h1", "h2", "h3", "h4"],
                        "workers": ["http://10.0.0.1:30000", "http://10.0.0.2:30001", "http://10.0.0.2:30002"],
                        "keep_addresses": ["10.0.0.3", "10.0.0.4"]}
    assert gw.gateway_backends(fleet(), GPU_HOSTS, "llama")["workers"] == ["http://10.0.0.9:30000"]


def test_gateways_of_a_model():
    assert gw.gateways_of(fleet(), ["gw", "gw-llama"], "qwen3") == ["gw"]
    assert gw.gateways_of(fleet(), [], "qwen3") == []


def test_input_errors_name_the_gateway_the_hosts_and_the_fix():
    assert gw.gateway_input_errors(fleet(), ["gw", "gw-llama"], GPU_HOSTS) == []
    hv = fleet()
    hv["h2"]["engine_api_key"] = "other-key"
    hv["gw-llama"]["gateway_model"] = "mistral"
    errors = gw.gateway_input_errors(hv, ["gw", "gw-llama"], GPU_HOSTS)
    assert len(errors) == 2
    assert errors[0].startswith("gw: ") and "h2" in errors[0] and "engine_api_key" in errors[0] and "h1" not in errors[0]
    assert errors[1].startswith("gw-llama: gateway_model=mistral is served by no host") and "llama, qwen3" in errors[1]


def query(item, ready, other=()):
    return {"item": item, "workers": [{"url": "http://%s:30000" % a, "status": "ready"} for a in ready]
            + [{"url": "http://%s:30000" % a, "status": "draining"} for a in other]}


def test_capacity_guard_refuses_a_batch_that_leaves_too_few_ready_hosts_and_says_what_works():
    hv = {"gw": {"gateway_min_healthy_workers": 2}, "gw-llama": {}}
    results = [query("gw", ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]), query("gw-llama", ["10.0.0.9"])]
    assert gw.gateway_capacity_errors(results, ["10.0.0.1", "10.0.0.2"], hv) == []
    errors = gw.gateway_capacity_errors(results, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"], hv)
    assert len(errors) == 2
    assert errors[0].startswith("gw: this batch (3 host(s) of the model) would leave 1 of 4")
    assert "gateway_min_healthy_workers=2" in errors[0] and "-e rollout_batch_size=2" in errors[0]
    assert errors[1].startswith("gw-llama:") and "no batch size would" in errors[1]


def test_capacity_guard_lets_a_model_with_nothing_serving_be_built():
    hv = {"gw": {}}
    assert gw.gateway_capacity_errors([query("gw", [], other=["10.0.0.1"])], ["10.0.0.1"], hv) == []


def test_summary_and_file_sd():
    hv = fleet()
    hv["gw"]["gateway_state"] = {"healthy": True, "url": "http://10.0.0.100:30080", "metrics": "10.0.0.100:29000",
                                 "model": "qwen3", "policy": "cache_aware", "container": "gpufleet-gateway",
                                 "wanted": ["http://10.0.0.1:30000", "http://10.0.0.2:30001"],
                                 "workers": [{"url": "http://10.0.0.1:30000", "status": "ready"},
                                             {"url": "http://10.0.0.3:30000", "status": "ready"}]}
    lines = gw.gateway_summary(hv, ["gw", "gw-llama"])
    assert lines[0].split() == ["gateway", "endpoint", "model", "policy", "workers", "in", "workers", "out", "health"]
    assert lines[1].split()[:7] == ["gw", "http://10.0.0.100:30080", "qwen3", "cache_aware", "1/2", "+1", "kept"]
    assert "http://10.0.0.2:30001 (not registered)" in lines[1] and lines[1].endswith("healthy")
    assert lines[2].split()[0] == "gw-llama" and lines[2].endswith("not in this run")
    assert gw.gateways_unanswered(hv, ["gw", "gw-llama"]) == ["gw-llama"]
    assert gw.gateway_file_sd(hv, ["gw", "gw-llama"]) == [
        {"targets": ["10.0.0.100:29000"],
         "labels": {"host": "gw", "model": "qwen3", "container": "gpufleet-gateway", "exporter": "gateway"}}]


def test_a_gateway_the_router_did_not_answer_for_and_one_outside_a_limit_run():
    hv = fleet()
    hv["gw"]["gateway_state"] = {"healthy": False, "model": "qwen3"}
    lines = gw.gateway_summary(hv, ["gw", "gw-llama"])
    assert lines[1].endswith("NOT ANSWERING") and lines[2].endswith("not in this run")
    previous = json.dumps([
        {"targets": ["10.0.0.1:30000"], "labels": {"host": "h1", "exporter": "engine"}},
        {"targets": ["10.0.0.100:29000"], "labels": {"host": "gw", "exporter": "gateway"}},
        {"targets": ["10.0.0.101:29000"], "labels": {"host": "gw-llama", "exporter": "gateway", "model": "llama"}}])
    # gw-llama was outside the run, gw's router is down: both stay watched, engines' targets are not theirs.
    assert gw.gateway_file_sd(hv, ["gw", "gw-llama"], previous=previous) == json.loads(previous)[1:]
    assert gw.gateway_file_sd(hv, ["gw", "gw-llama"], previous="not json") == []
    assert gw.gateway_file_sd(hv, ["gw-llama"], previous=previous) == json.loads(previous)[2:]  # gw left the inventory


def test_a_malformed_fact_is_one_filter_error():
    from ansible.errors import AnsibleFilterError
    filters = gw.FilterModule().filters()
    with pytest.raises(AnsibleFilterError, match="gateway_backends"):
        filters["gateway_backends"]({"h": {"engine_served_model_name": "q", "engine_deployments": [{}],
                                           "engine_health_result": {"healthy": True}}}, ["h"], "q")


def rolled_back(host, port, served, labels=True, healthy=True):
    """`host` after a failed rollout: the plan moved the engine to `port`, the rollback restored a container of the
    older release, whose labels say where it listens and what it serves."""
    after = {"id": "c" * 12, "image": "old", "labels": {"gpufleet.port": "30000", "gpufleet.served_model_name": served}
             if labels else {"gpufleet.engine": "sglang"}}
    host.update(engine_deployments=[{"port": port}], engine_health_result={"healthy": healthy},
                engine_rollout={"instances": [{"name": "gpufleet-engine", "before": after, "after": after, "replaced": True}],
                                "rolled_back": True, "cause": "health gate: crashed; rolled back, now healthy"})
    return host


def test_a_rolled_back_host_is_registered_where_its_restored_container_listens():
    hv = fleet()
    rolled_back(hv["h1"], 31000, "qwen3")
    assert gw.gateway_backends(hv, GPU_HOSTS, "qwen3")["workers"][0] == "http://10.0.0.1:30000"   # not 31000
    # Not healthy again after the rollback, or restored from before the labels existed: left as the router has it.
    for kwargs in ({"healthy": False}, {"labels": False}):
        hv = fleet()
        rolled_back(hv["h1"], 31000, "qwen3", **kwargs)
        backends = gw.gateway_backends(hv, GPU_HOSTS, "qwen3")
        assert "10.0.0.1" in backends["keep_addresses"] and not any("10.0.0.1" in w for w in backends["workers"])
    # The restored release serves the old model name: it is no worker of the new name's router.
    hv = fleet()
    rolled_back(hv["h1"], 30000, "qwen2")
    backends = gw.gateway_backends(hv, GPU_HOSTS, "qwen3")
    assert not any("10.0.0.1" in w for w in backends["workers"]) and "10.0.0.1" not in backends["keep_addresses"]
