#!/usr/bin/env bash
# Device call 1 (carry: [".rengine1"]). Unpacks deps + vllm (without _C) into /tmp/site,
# parks the first half of _C in /tmp/stage, and prints what the image really has.
set -u
mkdir -p /tmp/site /tmp/stage
for a in .rengine1/deps.tar.xz .rengine1/vllm_py_fa3.tar.xz; do xz -dc "$a" | tar -xf - -C /tmp/site || { echo "UNPACK_FAILED $a"; exit 2; }; done
cp .rengine1/c.tar.xz.part0 /tmp/stage/ || exit 2
ls -l /tmp/stage; du -sh /tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
python3 -m pip list 2>/dev/null | grep -iE '^(torch|triton|transformers|tokenizers|huggingface.hub|safetensors|numpy|anyio|h11|click|httpx|aiohttp|protobuf|prometheus.client|typing.extensions|uvloop|pillow|sentencepiece|tiktoken|einops|cloudpickle|psutil|requests|regex|pyyaml|opencv-python-headless|nvidia-ml-py|cuda-bindings) ' || true
ldd --version | head -1; command -v gcc cc || echo 'no C compiler (Triton JIT needs one)'
# (The original's "early FA3 ABI signal" import is gone: vllm/__init__ imports vllm._C through
# vllm.platforms, and _C only arrives in call 2, so it always failed with ModuleNotFoundError on
# 2026-12-04. Call 2's serve log says "Using FlashAttention version 3" instead.)
python3 .rengine1/make_tiny_qwen2.py /tmp/tiny-qwen2 2>&1 | tail -1
echo STAGE1_OK
