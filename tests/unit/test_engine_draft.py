"""Speculative decoding end to end on the controller side: the draft snapshot model_fetch publishes ->
the engine role's model keys (module_utils/engine_draft, filter engine_draft) -> the plan's command line
and the container spec (the draft mounted read-only where the command line names it)."""
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.filter.draft import engine_draft
from ansible_collections.gpufleet.serving.plugins.plugin_utils import engine_deploy
from ansible_collections.gpufleet.serving.plugins.module_utils.engine_draft import (
    DRAFT_MOUNT, draft_keys, input_errors)
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import PlanError
from gpu_fixtures import gpu_facts, model

# gpufleet_model as model_fetch publishes it for seed 002's deployment (Qwen3-VL-8B + its EAGLE3 draft).
FACT = {"repo_id": "Qwen/Qwen3-VL-8B-Instruct", "dir": "/srv/models/Qwen--Qwen3-VL-8B-Instruct",
        "commit_sha": "a" * 40, "bytes": 17_600_000_000, "weights_bytes": 17_530_000_000,
        "extra_models": [{"name": "draft", "repo_id": "taobao-mnn/Qwen3-VL-8B-Instruct-Eagle3",
                          "dir": "/srv/models/taobao-mnn--Qwen3-VL-8B-Instruct-Eagle3", "commit_sha": "b" * 40,
                          "bytes": 850_000_000, "weights_bytes": 840_000_000}]}


def target(**draft):
    m = model("Qwen3-VL-8B-Instruct", path="/models/model", host_path=FACT["dir"],
              weights_bytes=FACT["weights_bytes"])
    m.update(draft)
    return m


def deploy(engine, mdl):
    [only] = engine_deploy.deployments(gpu_facts("l40s"), model=mdl, engine=engine, host="l40s-1",
                                       model_sha="a" * 40)
    return only


def option(args, flag):
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_the_draft_is_mounted_read_only_where_the_command_line_names_it(engine):
    keys = draft_keys(FACT, "draft", host="l40s-1", model_mount="/models/model")
    with_draft, without = deploy(engine, target(**keys)), deploy(engine, target())
    draft_dir = FACT["extra_models"][0]["dir"]
    assert "%s:%s:ro" % (draft_dir, DRAFT_MOUNT) in with_draft["container"]["volumes"]
    assert not any(draft_dir in v for v in without["container"]["volumes"])
    args = with_draft["container"]["command"]
    if engine == "sglang":
        assert option(args, "--speculative-algorithm") == "EAGLE3"
        assert option(args, "--speculative-draft-model-path") == DRAFT_MOUNT
    else:
        spec = json.loads(option(args, "--speculative-config"))
        assert (spec["method"], spec["model"]) == ("eagle3", DRAFT_MOUNT)
    # The draft's weights are in the fit, from the fact's weights_bytes.
    assert (with_draft["plan"]["fit"]["weights_bytes"] - without["plan"]["fit"]["weights_bytes"]
            == FACT["extra_models"][0]["weights_bytes"])
    assert with_draft["plan"]["decisions"]["speculative"] is True
    assert with_draft["probe"]["vision"] is True   # a VLM: the health gate sends one image request too
    assert with_draft["plan"]["plan_hash"] != without["plan"]["plan_hash"]


def test_algorithm_and_mount_come_from_the_inventory():
    keys = draft_keys(FACT, "draft", algorithm="standalone", mount="/opt/draft")
    assert (keys["draft_algorithm"], keys["draft_path"]) == ("STANDALONE", "/opt/draft")
    args = deploy("vllm", target(**keys))["container"]["command"]
    assert json.loads(option(args, "--speculative-config"))["method"] == "draft_model"
    assert "%s:/opt/draft:ro" % FACT["extra_models"][0]["dir"] in deploy("vllm", target(**keys))["container"]["volumes"]


def test_no_draft_model_means_no_speculative_keys():
    assert draft_keys(FACT, None) == {} and engine_draft(FACT, "") == {}


def test_a_draft_that_was_not_fetched_fails_naming_host_variable_and_fix():
    fact = dict(FACT, extra_models=[])
    with pytest.raises(PlanError) as err:
        draft_keys(fact, "draft", host="l40s-1")
    msg = str(err.value)
    assert msg.startswith("l40s-1: engine_draft_model 'draft'")
    assert "model_fetch_extra_models" in msg and "engine_draft_model to null" in msg
    with pytest.raises(AnsibleFilterError, match="l40s-1: engine_draft_model 'eagle'"):
        engine_draft(FACT, "eagle", host="l40s-1")


def test_a_draft_without_weights_or_over_the_model_mount_fails():
    empty = dict(FACT, extra_models=[dict(FACT["extra_models"][0], weights_bytes=None)])
    with pytest.raises(PlanError, match="holds no weight files .* allow_patterns"):
        draft_keys(empty, "draft", host="h")
    with pytest.raises(PlanError, match="engine_draft_mount /models/model/ is the model's own mount"):
        draft_keys(FACT, "draft", host="h", mount="/models/model/", model_mount="/models/model")


def test_preflight_input_check_before_any_change():
    """fleet_inputs runs this on the inventory values, before model_fetch downloads anything."""
    good = {"engine_draft_model": "draft",
            "model_fetch_extra_models": [{"repo_id": "taobao-mnn/Qwen3-VL-8B-Instruct-Eagle3", "name": "draft"}]}
    assert input_errors("l40s-1", good) == []
    # Without a name, model_fetch names a snapshot after its repo.
    assert input_errors("l40s-1", dict(good, engine_draft_model="Qwen3-VL-8B-Instruct-Eagle3",
                                       model_fetch_extra_models=[{"repo_id": "o/Qwen3-VL-8B-Instruct-Eagle3"}])) == []
    assert input_errors("l40s-1", {}) == []
    [missing] = input_errors("l40s-1", {"engine_draft_model": "draft"})
    assert missing.startswith("l40s-1: engine_draft_model 'draft' names no snapshot")
    assert "model_fetch_extra_models names: none" in missing and "name: draft" in missing
    [clash] = input_errors("l40s-1", dict(good, engine_draft_mount="/models/model"))
    assert "engine_draft_mount /models/model is the model's own mount" in clash
