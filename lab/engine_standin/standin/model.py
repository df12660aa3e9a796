"""What the real loaders check before serving: a config.json, then at least one weight file.

The stand-in never downloads: a path that is not a local model directory is refused the way
the real engine refuses it when the Hugging Face Hub is unreachable (HF_HUB_OFFLINE=1).
"""
import glob
import json
import os

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class ModelError(Exception):
    pass


def _config_error(engine, path):
    if engine == "vllm":  # vllm/transformers_utils/config.py
        return (
            f"ValueError: Invalid repository ID or local directory specified: '{path}'.\n"
            "Please verify the following requirements:\n"
            "1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a 'config.json'."
        )
    return (  # SGLang loads the config through transformers.AutoConfig
        f"OSError: Can't load the configuration of '{path}'. Make sure '{path}' is the correct "
        "path to a directory containing a config.json file."
    )


def load_config(engine, path):
    """Return the parsed config.json of a local model directory or raise ModelError."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ModelError(_config_error(engine, path))
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as exc:
        raise ModelError(f"ValueError: {config_path} is not valid JSON: {exc}") from None
    if not any(glob.glob(os.path.join(path, pattern)) for pattern in WEIGHT_PATTERNS):
        # Same text in sglang/srt/model_loader/loader.py and vllm default_loader.py.
        raise ModelError(f"RuntimeError: Cannot find any model weights with `{path}`")
    return config


def context_length(config, override):
    """`--context-length` / `--max-model-len` win; else the model's max_position_embeddings."""
    if override and override > 0:
        return override
    text_config = config.get("text_config") or config
    return int(text_config.get("max_position_embeddings") or config.get("max_position_embeddings") or 4096)
