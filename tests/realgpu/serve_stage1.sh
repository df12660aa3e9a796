#!/usr/bin/env bash
# Device call 1 of the real vLLM run (docs/real_gpu.md), carry [".rengine1"], from the repo root.
# The bundle's own stage 1 (unpack vLLM into /tmp/site, park half of _C, build /tmp/tiny-qwen2), then
# this host's live GPU facts (collect.py: the gpu_facts module's own code) and the planner's plan for
# them and the generated model, kept in /tmp/stage for call 2 and returned under $OUT.
set -uo pipefail
OUT=${OUT:?set OUT}
bash .rengine1/stage1.sh 2>&1 | tee "$OUT/stage1.txt"
if ! { [ "${PIPESTATUS[0]}" = 0 ] && grep -q STAGE1_OK "$OUT/stage1.txt"; }; then echo STAGE1_FAILED; exit 2; fi
python3 tests/fixtures/real_h100/collect.py /usr/local/nvidia/bin/nvidia-smi > /tmp/stage/facts.json || exit 2
cp /tmp/tiny-qwen2/config.json "$OUT/tiny-qwen2-config.json"
python3 tests/realgpu/plan_real_vllm.py --facts /tmp/stage/facts.json --model-dir /tmp/tiny-qwen2 \
  > /tmp/stage/plan.json || { echo PLAN_FAILED; exit 2; }
cp /tmp/stage/plan.json "$OUT/plan_on_host.json"
python3 -c "import json; print('PLAN', ' '.join(json.load(open('/tmp/stage/plan.json'))['plan']['argv']))"
echo SERVE_STAGE1_OK
