#!/usr/bin/env python3
"""Write a tiny, deterministic Qwen2-style model directory (config, safetensors, tokenizer).

Stdlib only: the lab gateway and the test suite both run it, and the bytes must be identical on every
run so that git/LFS object ids (and therefore commit shas) are reproducible.

    python lab/hf/make_tiny_model.py OUT_DIR [--layers 2] [--intermediate 4096] [--seed 1234]
"""
import argparse
import json
import os
import random
import struct

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
VOCAB = 1000

# bf16 high byte: keep the sign bit, force a small exponent so every weight is a finite value in
# roughly ±[0.004, 0.03] (random bytes would otherwise include NaN/Inf).
_BF16_HIGH = bytes((b & 0x80) | 0x3C for b in range(256))
_BF16_ONE = struct.pack("<H", 0x3F80)


def tensor_shapes(layers, intermediate):
    """Qwen2ForCausalLM parameter names and shapes, in file order."""
    q_out, kv_out = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    shapes = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", [HIDDEN]),
            (p + "self_attn.q_proj.weight", [q_out, HIDDEN]),
            (p + "self_attn.q_proj.bias", [q_out]),
            (p + "self_attn.k_proj.weight", [kv_out, HIDDEN]),
            (p + "self_attn.k_proj.bias", [kv_out]),
            (p + "self_attn.v_proj.weight", [kv_out, HIDDEN]),
            (p + "self_attn.v_proj.bias", [kv_out]),
            (p + "self_attn.o_proj.weight", [HIDDEN, q_out]),
            (p + "post_attention_layernorm.weight", [HIDDEN]),
            (p + "mlp.gate_proj.weight", [intermediate, HIDDEN]),
            (p + "mlp.up_proj.weight", [intermediate, HIDDEN]),
            (p + "mlp.down_proj.weight", [HIDDEN, intermediate]),
        ]
    shapes += [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]
    return shapes


def tensor_bytes(name, count, rng):
    if name.endswith("norm.weight"):
        return _BF16_ONE * count
    raw = bytearray(rng.randbytes(2 * count))
    raw[1::2] = bytes(raw[1::2]).translate(_BF16_HIGH)
    return bytes(raw)


def safetensors_bytes(shapes, seed):
    """A safetensors file: u64 header length, JSON header (sorted keys, space-padded to 8), data."""
    rng = random.Random(seed)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, shape in shapes:
        count = 1
        for dim in shape:
            count *= dim
        blob = tensor_bytes(name, count, rng)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def config(layers, intermediate):
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "max_window_layers": layers,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 0,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.0",
    }


def tokenizer():
    """A valid `tokenizers` WordLevel tokenizer over VOCAB tokens (0 = eos, 1 = bos, 2 = unk)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), VOCAB)})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, tok in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<|im_start|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<unk>",
    "model_max_length": 4096,
    "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|endoftext|>"
                     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}",
}

GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 0, "do_sample": False, "max_new_tokens": 64}


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def make_model(out_dir, layers=2, intermediate=4096, seed=1234):
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "config.json"), config(layers, intermediate))
    write_json(os.path.join(out_dir, "generation_config.json"), GENERATION_CONFIG)
    write_json(os.path.join(out_dir, "tokenizer.json"), tokenizer())
    write_json(os.path.join(out_dir, "tokenizer_config.json"), TOKENIZER_CONFIG)
    with open(os.path.join(out_dir, "model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(tensor_shapes(layers, intermediate), seed))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    make_model(args.out_dir, args.layers, args.intermediate, args.seed)


if __name__ == "__main__":
    main()
