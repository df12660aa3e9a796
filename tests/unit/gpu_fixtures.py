"""gpufleet_gpu facts (docs/CONTRACTS.md) for the cards the planner is tested on.

Names, memory sizes and compute capabilities are those nvidia-smi reports for the real cards
(the H100 ones match tests/fixtures/real_h100 / shared/reference/gpu).
"""
import copy
import json
import os

CARDS = {
    "h100": {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "compute_capability": "9.0",
             "architecture": "hopper"},
    # nvidia-smi on a lent H200 (driver 580.159.04): name, memory.total, compute_cap.
    "h200": {"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": "9.0", "architecture": "hopper"},
    "l40s": {"name": "NVIDIA L40S", "memory_mib": 46068, "compute_capability": "8.9", "architecture": "ada"},
    "rtx5090": {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
                "architecture": "blackwell"},
    "rtx4000": {"name": "Quadro RTX 4000", "memory_mib": 8192, "compute_capability": "7.5",
                "architecture": "turing"},
}

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "models")


def gpu_facts(card, count=1, driver="580.95.05", cuda="13.0", kernel_module="open", **changes):
    """Healthy facts for `count` identical cards; keyword arguments replace top-level keys."""
    spec = CARDS[card]
    gpus = [{"index": i, "uuid": "GPU-%s-%d" % (card, i), "name": spec["name"], "memory_mib": spec["memory_mib"],
             "compute_capability": spec["compute_capability"], "pci_bus_id": "00000000:%02X:00.0" % (i + 1),
             "mig_mode": "Disabled"} for i in range(count)]
    facts = {
        "state": "healthy",
        "message": "",
        "nvidia_smi_path": "/usr/bin/nvidia-smi",
        "driver_version": driver,
        "cuda_version": cuda,
        "count": count,
        "gpus": gpus,
        "compute_capability": spec["compute_capability"],
        "architecture": spec["architecture"],
        "memory_total_mib": spec["memory_mib"] * count,
        "memory_min_mib": spec["memory_mib"],
        "homogeneous": True,
        "nvlink": count > 1 and card == "h100",
        "kernel_module": kernel_module,
    }
    facts.update(changes)
    return facts


def model(name, path=None, **changes):
    """The `model` dict of docs/CONTRACTS.md for a fixture config (weights_bytes left to the caller)."""
    with open(os.path.join(MODELS_DIR, name, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    result = {"repo_id": "Qwen/" + name if name != "tiny-lab" else "gpufleet/tiny-lab",
              "path": path or "/models/" + name, "host_path": "/srv/models/" + name,
              "served_name": name.lower(), "config": config}
    result.update(copy.deepcopy(changes))
    return result
