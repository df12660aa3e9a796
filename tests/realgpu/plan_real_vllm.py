#!/usr/bin/env python3
"""The planner's vLLM 0.26.0 plan for the real H200 and the tiny Qwen2 the project generates, as JSON.

Runs here (from the recorded facts) and on the GPU host (from live facts), with nothing but python3
and PyYAML: the plan that tests/realgpu/serve_stage2.sh serves is this script's output, unedited.

    python3 tests/realgpu/plan_real_vllm.py                                  # recorded facts + config
    python3 tests/realgpu/plan_real_vllm.py --facts live.json --model-dir /tmp/tiny-qwen2

The model is served from /models/model, the path the planner gives the model inside the engine's
container; on the GPU host that path is a link to the generated model directory.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "collections"))
from ansible_collections.gpufleet.serving.plugins.module_utils import weight_files  # noqa: E402
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import build_plan  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "real_h200")
ENGINE, ENGINE_VERSION = "vllm", "0.26.0"
# What make_tiny_qwen2.py builds; no repo id: it is generated, never fetched.
MODEL = {"path": "/models/model", "served_name": "tiny-qwen2"}
PLAN_KEYS = ("engine", "engine_version", "knowledge_table_version", "image", "argv", "args", "env", "port",
             "decisions", "fit", "warnings", "plan_hash")


def model_inputs(model_dir=None, config_path=None, weights_bytes=None):
    """(config, weights_bytes) from a model directory (as the hf_model module counts them), or from a
    config.json and a byte count (the recorded ones)."""
    if model_dir:
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        return config, weight_files.weights_bytes(weight_files.sizes_in_dir(model_dir),
                                                  weight_files.read_index(model_dir))
    with open(config_path) as f:
        return json.load(f), weights_bytes


def plan(facts, config, weights_bytes, host):
    model = dict(MODEL, config=config, weights_bytes=weights_bytes)
    full = build_plan(facts, ENGINE, model, engine_version=ENGINE_VERSION, host=host)
    return {key: full[key] for key in PLAN_KEYS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--facts", default=os.path.join(FIXTURES, "facts.json"),
                        help="JSON with a gpufleet_gpu key (collect.py's output or a fixture)")
    parser.add_argument("--model-dir", help="the generated model directory (config.json + safetensors)")
    parser.add_argument("--config", default=os.path.join(FIXTURES, "tiny-qwen2-config.json"))
    parser.add_argument("--weights-bytes", type=int, help="with --config: the weight files' bytes")
    parser.add_argument("--host", default="vm")
    args = parser.parse_args()
    with open(args.facts) as f:
        facts = json.load(f)["gpufleet_gpu"]
    config, weights = model_inputs(args.model_dir, args.config, args.weights_bytes)
    print(json.dumps({"host": args.host, "gpufleet_gpu": facts, "model": dict(MODEL, weights_bytes=weights),
                      "config": config, "plan": plan(facts, config, weights, args.host)},
                     indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
