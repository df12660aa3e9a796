"""The real vLLM 0.26.0 run on a real H200 (docs/real_gpu.md, tests/realgpu/serve_stage*.sh).

tests/fixtures/real_h200/vllm-0.26.0-serve.json is what that run recorded: the live GPU facts, the
generated model's config.json and weight bytes, the planner's plan for them, the command that ran and
the collection's engine_health result against it. These tests make the fixture go stale loudly: when
the planner or the knowledge table would now give that host other arguments, the real run proved
nothing about them, and docs/real_gpu.md says how to run it again."""
import json
import os
import re
import sys

import pytest

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "..", "fixtures", "real_h200")
SERVE = os.path.join(FIXTURES, "vllm-0.26.0-serve.json")
SERVE_LOG = os.path.join(FIXTURES, "vllm-0.26.0-serve.log")
STALE = "the planner now gives the real H200 other vLLM 0.26.0 arguments: re-run the real GPU run (docs/real_gpu.md)"


def _plan_real_vllm():
    tools = os.path.join(HERE, "..", "realgpu")
    sys.path.insert(0, tools)
    try:
        import plan_real_vllm
    finally:
        sys.path.remove(tools)
    return plan_real_vllm


@pytest.fixture(scope="module")
def served():
    with open(SERVE) as f:
        return json.load(f)


def test_the_served_arguments_are_the_planners_today(served):
    """Same facts, config and weight bytes -> the same plan (argv, env, decisions, fit); and what ran
    is that argv."""
    recorded = served["planned_on_host"]
    tool = _plan_real_vllm()
    today = tool.plan(recorded["gpufleet_gpu"], recorded["config"], recorded["model"]["weights_bytes"],
                      recorded["host"])
    assert today["argv"] == recorded["plan"]["argv"], STALE
    # What ran and why, not the table's version stamp (bumped by any edit) or the hash that covers it.
    ran = ("engine", "engine_version", "image", "argv", "args", "env", "port", "decisions", "fit")
    assert {k: today[k] for k in ran} == {k: recorded["plan"][k] for k in ran}, STALE
    assert (today["engine"], today["engine_version"]) == ("vllm", "0.26.0")
    # The bundle has no `vllm` console script: its entry point module ran the planner's args unchanged.
    assert served["launched"]["command"] == ["python3", "-m", "vllm.entrypoints.cli.main"] + today["argv"][1:]
    assert served["launched"]["planner_env"] == today["env"]
    assert served["launched"]["model_link"] == {"/models/model": "/tmp/tiny-qwen2"}


def test_the_recorded_h200_facts_plan_the_same_as_the_live_ones(served):
    """The live facts of the serving machine and tests/fixtures/real_h200/facts.json (another H200 run)
    differ only in the GPU's UUID; the planner gives both the same command line."""
    recorded = served["planned_on_host"]
    with open(os.path.join(FIXTURES, "facts.json")) as f:
        fixture = json.load(f)["gpufleet_gpu"]
    live = recorded["gpufleet_gpu"]
    assert (live["gpus"][0]["name"], live["compute_capability"], live["count"]) == ("NVIDIA H200", "9.0", 1)
    assert live["memory_min_mib"] == fixture["memory_min_mib"]
    tool = _plan_real_vllm()
    again = tool.plan(fixture, recorded["config"], recorded["model"]["weights_bytes"], recorded["host"])
    assert again["argv"] == recorded["plan"]["argv"]
    assert served["same_argv_as_planned_here"] is True


def test_what_the_planner_chose_for_hopper_is_what_the_real_engine_ran(served):
    """FA3 (FLASH_ATTN), an FP8 KV cache, CUDA graphs on: the engine's own log says it used them."""
    argv = served["planned_on_host"]["plan"]["argv"]
    assert argv[argv.index("--attention-backend") + 1] == "FLASH_ATTN"
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert "--enforce-eager" not in argv
    with open(SERVE_LOG) as f:
        log = f.read()
    assert "'kv_cache_dtype': 'fp8'" in log and "'attention_backend': 'FLASH_ATTN'" in log
    assert "Using FlashAttention version 3" in log and "Graph capturing finished" in log
    assert "Traceback" not in log


def test_the_planners_kv_cache_estimate_matches_the_real_engine(served):
    """model_fit's KV budget (fraction x memory - reserve - weights) against the tokens vLLM really
    allocated at the same --gpu-memory-utilization: within 2 %."""
    with open(SERVE_LOG) as f:
        real = int(re.search(r"GPU KV cache size: ([\d,]+) tokens", f.read()).group(1).replace(",", ""))
    planned = served["planned_on_host"]["plan"]["fit"]["max_context_fit"]
    assert abs(planned - real) / real < 0.02, (planned, real)


def test_engine_health_found_the_real_server_healthy_with_sane_numbers(served):
    health = served["engine_health"]
    assert served["engine_health_rc"] == 0
    assert health["healthy"] is True and health["failed"] is False and health["diagnosis"] is None
    assert health["models"] == [served["planned_on_host"]["model"]["served_name"]]
    assert health["engine_version"] == "0.26.0" == served["vllm_package_version"]
    assert 0 <= health["time_to_healthy_s"] < 420
    # A 2-layer model on an H200: the first token within a second, decode well above 10 tok/s and
    # below what one streamed request through the HTTP server could carry.
    assert 0 < health["ttft_ms"] < 1000
    assert 10 < health["tokens_per_s"] < 100000
    timings = served["timings_s"]
    assert 0 < timings["server_start_to_first_health_200"] <= timings["server_start_to_engine_health_end"]
    assert served["nvidia_smi_while_serving"].startswith("NVIDIA H200, ")
