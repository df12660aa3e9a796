"""Vision-language models in the plan (plugin_utils/vision_fit.py, data/multimodal.yml): the vision
tower's weights and activations in the fit, the image-token budget and the engines' multimodal options,
on the real public configs of Qwen2.5-VL-7B-Instruct and Qwen3-VL-8B-Instruct."""
import json

import pytest

from ansible_collections.gpufleet.serving.plugins.plugin_utils import vision_fit
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError, build_plan
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import (
    GIB, MIB, estimate_weights, model_dims)
from gpu_fixtures import gpu_facts, model

VLMS = ["Qwen2.5-VL-7B-Instruct", "Qwen3-VL-8B-Instruct"]
# Parameter counts the model cards publish (safetensors metadata): 8.29B and 8.77B in all.
PUBLISHED = {"Qwen2.5-VL-7B-Instruct": 8.29e9, "Qwen3-VL-8B-Instruct": 8.77e9}


def option(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


@pytest.mark.parametrize("name", VLMS)
def test_text_plus_tower_parameters_match_the_published_size(name):
    config = model(name)["config"]
    text = estimate_weights(model_dims(config)) / 2          # bf16: 2 bytes per parameter
    tower = vision_fit.tower_parameters(vision_fit.tower(config))
    assert text + tower == pytest.approx(PUBLISHED[name], rel=0.01)
    assert vision_fit.tower(model("Qwen3-14B")["config"]) is None


def test_tokens_per_image_follow_patch_and_merge_sizes():
    for name in VLMS:
        t = vision_fit.tower(model(name)["config"])
        _unused, max_pixels, assumed = vision_fit.processor_pixels(t, "h")
        assert not assumed
        # The processor's largest image: max_pixels / (patch x merge)^2 tokens after the merger.
        assert vision_fit.tokens_per_image(t, max_pixels) * (t["patch"] * t["merge"]) ** 2 == max_pixels


@pytest.mark.parametrize("name", VLMS)
def test_estimated_weights_include_the_tower(name):
    plan = build_plan(gpu_facts("l40s"), "sglang", model(name), "high_performance")
    config = model(name)["config"]
    assert plan["fit"]["weights_bytes"] == estimate_weights(model_dims(config)) + 2 * vision_fit.tower_parameters(
        vision_fit.tower(config))
    given = build_plan(gpu_facts("l40s"), "sglang", model(name, weights_bytes=17 * 10 ** 9), "high_performance")
    assert given["fit"]["weights_bytes"] == 17 * 10 ** 9   # the real files already hold the tower


@pytest.mark.parametrize("name", VLMS)
def test_vllm_reserves_the_encoder_activations_inside_its_fraction(name):
    plan = build_plan(gpu_facts("h100"), "vllm", model(name, weights_bytes=17 * 10 ** 9))
    text = build_plan(gpu_facts("h100"), "vllm", model("Qwen3-14B", weights_bytes=17 * 10 ** 9))
    vision = plan["decisions"]["vision"]
    assert plan["fit"]["reserve_bytes"] - text["fit"]["reserve_bytes"] == vision["activation_bytes"]
    assert 1 * GIB < vision["activation_bytes"] < 4 * GIB   # a full-size image through a ~0.6B ViT
    assert json.loads(option(plan["args"], "--limit-mm-per-prompt")) == {"image": vision["images_per_request"]}
    assert vision["images_per_request"] * vision["tokens_per_image"] <= plan["decisions"]["context_length"] // 2
    assert "--mm-processor-kwargs" not in plan["args"]      # a full-size image fits the context


@pytest.mark.parametrize("engine, flag, key", [("sglang", "--mm-process-config", "image"),
                                               ("vllm", "--mm-processor-kwargs", None)])
def test_a_short_context_lowers_max_pixels_through_the_engines_processor_option(engine, flag, key):
    plan = build_plan(gpu_facts("l40s"), engine, model("Qwen2.5-VL-7B-Instruct"), "ultra_low_memory")
    context, vision = plan["decisions"]["context_length"], plan["decisions"]["vision"]
    kwargs = json.loads(option(plan["args"], flag))
    size = (kwargs[key] if key else kwargs)["size"]
    assert size["longest_edge"] == vision["max_pixels"] < 12845056
    assert vision["tokens_per_image"] <= context // 2
    assert vision["images_per_request"] == 1
    limit = "--limit-mm-data-per-request" if engine == "sglang" else "--limit-mm-per-prompt"
    assert json.loads(option(plan["args"], limit)) == {"image": 1}


def test_overrides_win_and_a_pinned_max_pixels_is_checked():
    plan = build_plan(gpu_facts("l40s"), "vllm", model("Qwen3-VL-8B-Instruct"),
                      overrides={"--limit-mm-per-prompt": '{"image": 1, "video": 0}'})
    assert json.loads(option(plan["args"], "--limit-mm-per-prompt")) == {"image": 1, "video": 0}
    with pytest.raises(PlanError, match="pinned max_pixels 16777216 makes 16384 tokens per image"):
        build_plan(gpu_facts("l40s"), "vllm", model("Qwen3-VL-8B-Instruct"), "ultra_low_memory",
                   overrides={"--mm-processor-kwargs": {"size": {"longest_edge": 16777216, "shortest_edge": 65536}}})


def test_sglang_fraction_must_leave_room_for_the_encoder():
    with pytest.raises(PlanError) as err:
        build_plan(gpu_facts("l40s"), "sglang", model("Qwen2.5-VL-7B-Instruct"),
                   overrides={"--mem-fraction-static": 0.97})
    assert "the vision encoder needs" in str(err.value) and "--mem-fraction-static" in str(err.value)


def test_text_models_get_no_multimodal_options():
    plan = build_plan(gpu_facts("l40s"), "sglang", model("Qwen3-14B"))
    assert "vision" not in plan["decisions"]
    assert not [a for a in plan["args"] if "-mm-" in a or "multimodal" in a]
    assert plan["fit"]["reserve_bytes"] == 0 * MIB


# A VLM the table does not know, with a fixed-resolution tower (Llama 4 Scout's vision_config, 336 px tiles,
# pixel shuffle 0.5): planned on one tile of its image_size, with a warning, instead of refused.
LLAMA4_SCOUT_TOWER = {"model_type": "llama4_vision_model", "hidden_size": 1408, "intermediate_size": 5632,
                      "num_hidden_layers": 34, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                      "pixel_shuffle_ratio": 0.5, "vision_output_dim": 4096}


def test_an_unknown_vlm_with_a_fixed_resolution_tower_is_planned_on_one_tile_with_a_warning():
    vlm = model("Qwen3-14B", weights_bytes=40 * 10 ** 9)
    vlm["config"] = dict(vlm["config"], model_type="llama4", vision_config=LLAMA4_SCOUT_TOWER)
    plan = build_plan(gpu_facts("h100"), "vllm", vlm)
    assert plan["decisions"]["vision"]["tokens_per_image"] == (336 // 14 // 2) ** 2  # 24x24 patches, 2x2 shuffled
    assert any("not in data/multimodal.yml" in w and "336x336" in w for w in plan["warnings"])
    no_size = dict(LLAMA4_SCOUT_TOWER)
    del no_size["image_size"]
    vlm["config"]["vision_config"] = no_size
    with pytest.raises(PlanError, match="no image_size: add its min_pixels/max_pixels"):
        build_plan(gpu_facts("h100"), "vllm", vlm)
