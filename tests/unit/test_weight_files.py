"""The weight size the planner is given: the weight files the engines load from a snapshot, never the
whole snapshot (Llama 3.1 ships original/consolidated.00.pth beside the safetensors). Covers
module_utils/weight_files, model_fit.weights_on_disk, hf_model's weights_bytes and the gpufleet_model fact."""
import json
import os
import subprocess
import sys

from ansible_collections.gpufleet.serving.plugins.filter.model_fetch import model_fetch_fact, model_snapshots
from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot, weight_files
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import weights_on_disk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = "ansible_collections.gpufleet.serving.plugins.modules.hf_model"


def write(root, name, size):
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"w" * size)
    return size


def llama31_layout(root):
    """Meta-Llama-3.1-8B-Instruct's file layout (sizes scaled down): HF shards, their index, and the
    original Meta checkpoint under original/. Returns the bytes of the shards."""
    shards = {"model-0000%d-of-00002.safetensors" % i: size for i, size in ((1, 5000), (2, 1200))}
    for name, size in shards.items():
        write(root, name, size)
    write(root, "original/consolidated.00.pth", 6100)
    write(root, "original/params.json", 20)
    write(root, "original/tokenizer.model", 300)
    write(root, "config.json", 80)
    write(root, "tokenizer.json", 900)
    with open(os.path.join(root, weight_files.INDEX), "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": 6190},
                   "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                  "lm_head.weight": "model-00002-of-00002.safetensors"}}, handle)
    return sum(shards.values())


def all_sizes(root):
    return {os.path.relpath(os.path.join(d, n), root): os.path.getsize(os.path.join(d, n))
            for d, _unused, names in os.walk(root) for n in names}


def test_safetensors_with_an_original_pth_count_once(tmp_path):
    shards = llama31_layout(str(tmp_path))
    sizes = all_sizes(str(tmp_path))
    index = weight_files.read_index(str(tmp_path))
    assert weight_files.loaded_weight_files(sizes, index) == (
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"], "safetensors")
    assert weight_files.weights_bytes(sizes, index) == shards
    assert sum(sizes.values()) > 2 * shards  # what the engine role passed before: the whole snapshot
    assert weights_on_disk(str(tmp_path)) == (shards, "safetensors")


def test_index_filters_a_consolidated_copy_and_bin_drops_trainer_files(tmp_path):
    # Mistral-7B-Instruct-v0.3: consolidated.safetensors beside the indexed shards (the same tensors).
    sizes = {"consolidated.safetensors": 700, "model-00001-of-00002.safetensors": 400,
             "model-00002-of-00002.safetensors": 300, weight_files.INDEX: 50}
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    assert weight_files.weights_bytes(sizes, index) == 700
    # .bin only when there is no safetensors; the trainer's state is not a weight; .pt only as a last resort.
    assert weight_files.loaded_weight_files({"pytorch_model.bin": 90, "training_args.bin": 5, "x.pt": 3}) == (
        ["pytorch_model.bin"], "bin")
    assert weight_files.weights_bytes({"model.pt": 33, "original/consolidated.00.pth": 99}) == 33
    assert weight_files.weights_bytes({"config.json": 1, "original/consolidated.00.pth": 99}) is None


def adopt(tmp_path, snapshot_dir):
    """hf_model state=adopted (offline, no network) on a snapshot dir; returns the module result."""
    records = {}
    for rel, size in all_sizes(snapshot_dir).items():
        sha256, blob = hf_snapshot.hash_file(os.path.join(snapshot_dir, rel))
        records[rel] = {"size": size, "sha256": sha256, "blob_id": blob}
    manifest = hf_snapshot.build_manifest("meta-llama/Llama-3.1-8B-Instruct", "main", "c" * 40, records)
    args = {"repo_id": "meta-llama/Llama-3.1-8B-Instruct", "revision": "c" * 40, "path": snapshot_dir,
            "state": "adopted", "manifest": manifest}
    done = subprocess.run([sys.executable, "-m", MODULE], input=json.dumps({"ANSIBLE_MODULE_ARGS": args}),
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "collections")), check=False)
    return json.loads(done.stdout)


def test_hf_model_result_and_the_gpufleet_model_fact_carry_weights_bytes(tmp_path):
    snapshot_dir = str(tmp_path / "llama")
    shards = llama31_layout(snapshot_dir)
    snapshot_bytes = sum(all_sizes(snapshot_dir).values())
    result = adopt(tmp_path, snapshot_dir)
    assert not result.get("failed"), result
    assert result["bytes"] == snapshot_bytes
    assert result["weights_bytes"] == shards
    snapshots = model_snapshots({"repo_id": "meta-llama/Llama-3.1-8B-Instruct", "dir": snapshot_dir})
    fact = model_fetch_fact(snapshots, [result])
    assert (fact["bytes"], fact["weights_bytes"]) == (result["bytes"], shards)


def test_the_engine_role_passes_weights_bytes_not_the_snapshot_size():
    with open(os.path.join(REPO, "roles", "engine", "tasks", "main.yml"), encoding="utf-8") as handle:
        tasks = handle.read()
    assert "'weights_bytes': gpufleet_model.weights_bytes" in tasks
    assert "gpufleet_model.bytes" not in tasks
