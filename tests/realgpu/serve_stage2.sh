#!/usr/bin/env bash
# Device call 2 of the real vLLM run (docs/real_gpu.md), carry [".rengine2", ".rwhl"], on the machine
# call 1 left warm (it stays warm ~30 s). Serves the tiny Qwen2 with EXACTLY the planner's argv and env
# from call 1 ($STAGE/plan.json), runs tests/realgpu/engine_health.yml against it with ansible-core
# from the carried wheels, and writes $OUT/serve.json (what ran, what engine_health returned, timings).
# Exit 3: fresh machine (redo call 1); 6: engine_health failed.
set -uo pipefail
OUT=${OUT:?set OUT}
# STAGE/SITE/ASITE/DRY_RUN exist for a dry run off the GPU host (a stand-in vllm module in SITE).
STAGE=${STAGE:-/tmp/stage} SITE=${SITE:-/tmp/site} ASITE=${ASITE:-/tmp/ansible-site}
export STAGE SITE
if ! { [ -f "$STAGE/c.tar.xz.part0" ] && [ -d "$SITE/vllm" ] && [ -f "$STAGE/plan.json" ]; }; then
  echo 'STAGE1_MISSING: fresh machine, redo call 1 then call 2'; exit 3
fi
if [ -z "${DRY_RUN:-}" ]; then
  cat "$STAGE/c.tar.xz.part0" .rengine2/c.tar.xz.part1 > "$STAGE/c.tar.xz"
  sha256sum -c .rengine2/c.sha256 || exit 4
  xz -dc "$STAGE/c.tar.xz" | tar -xf - -C "$SITE" || exit 5
  # The planner's container path for the model, here a link to the generated directory.
  mkdir -p /models && ln -sfn /tmp/tiny-qwen2 /models/model
fi
[ -d "$ASITE/ansible" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target "$ASITE" .rwhl/*.whl \
  || exit 5

# argv[0] is the image's `vllm` console script; the trimmed bundle has none, so its target module
# (vllm.entrypoints.cli.main, the script's entry point) runs with the planner's arguments unchanged.
mapfile -d '' ARGS < <(python3 -c "import json,sys; a=json.load(open('$STAGE/plan.json'))['plan']['argv']
assert a[:2]==['vllm','serve'], a; sys.stdout.write(''.join(x+'\0' for x in a[1:]))")
[ "${#ARGS[@]}" -gt 2 ] || { echo "NO_PLAN_ARGV"; exit 2; }
# The plan's env, one NAME=value line each.
while IFS= read -r kv; do export "${kv%%=*}=${kv#*=}"; done < <(python3 -c "import json
for k,v in sorted(json.load(open('$STAGE/plan.json'))['plan']['env'].items()): print('%s=%s'%(k,v))")
# The bundle's needs, not the planner's: its site dir, no flashinfer (trimmed), offline, no telemetry.
export PYTHONPATH=$SITE VLLM_USE_FLASHINFER_SAMPLER=0 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
  DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
T0=$(date +%s.%N)
python3 -m vllm.entrypoints.cli.main "${ARGS[@]}" > "$OUT/serve.log" 2>&1 &
SERVER=$!
echo "SERVER pid $SERVER: python3 -m vllm.entrypoints.cli.main ${ARGS[*]}"

SERVED=$(python3 -c "import json; print(json.load(open('$STAGE/plan.json'))['model']['served_name'])")
PORT=$(python3 -c "import json; print(json.load(open('$STAGE/plan.json'))['plan']['port'])")
T1=$(date +%s.%N)
( export PYTHONPATH=$ASITE LANG=C.UTF-8 LC_ALL=C.UTF-8 ANSIBLE_HOME=/tmp/gpufleet-ansible \
    ANSIBLE_LOCAL_TEMP=/tmp/gpufleet-ansible/tmp ANSIBLE_CONFIG=tests/realgpu/ansible.cfg ANSIBLE_FORCE_COLOR=0 \
    ANSIBLE_INVENTORY_UNPARSED_WARNING=false
  exec python3 -m ansible.cli.playbook -i localhost, tests/realgpu/engine_health.yml \
    -e ansible_python_interpreter="$(command -v python3)" -e served_name="$SERVED" -e health_url="http://127.0.0.1:$PORT" \
    -e result_path="$OUT/engine_health.json" ) > "$OUT/engine_health.txt" 2>&1 &
HEALTH=$!
# Watchdog: a server that died ends the wait now (engine_health has no container to inspect here).
# It also notes when /health first answers 200, to time the server from its own start.
TH=0
while kill -0 $HEALTH 2>/dev/null; do
  if ! kill -0 $SERVER 2>/dev/null; then echo SERVER_EXITED; sleep 3; kill $HEALTH 2>/dev/null; break; fi
  [ "$TH" = 0 ] && python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" \
    2>/dev/null && TH=$(date +%s.%N)
  sleep 1
done
wait $HEALTH; HRC=$?
T2=$(date +%s.%N)
SMI=$(nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader 2>&1)
VERSION=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/version',timeout=5).read().decode())" 2>/dev/null || echo unavailable)
kill $SERVER 2>/dev/null; sleep 3; kill -9 $SERVER 2>/dev/null
tail -25 "$OUT/engine_health.txt"

python3 - "$T0" "$T1" "$T2" "$TH" "$HRC" "$SMI" "$VERSION" <<'PY'
import json, os, re, sys, time
t0, t1, t2, th = (float(x) for x in sys.argv[1:5])
rc, smi, version = int(sys.argv[5]), sys.argv[6].strip(), sys.argv[7].strip()
out, stage, site = os.environ["OUT"], os.environ["STAGE"], os.environ["SITE"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


plan, here = load(os.path.join(stage, "plan.json")), load(".rengine2/plan_here.json")
health = load(os.path.join(out, "engine_health.json"))
with open(os.path.join(out, "serve.log"), errors="replace") as f:
    log = f.read().splitlines()
keep = re.compile(r"non-default args|Using .*backend|FlashAttention|FA3|Model loading took|KV cache|Maximum concurrency"
                  r"|torch.compile|Graph capturing|init engine|Starting vLLM|Traceback|Error")
package = None
if os.path.exists(os.path.join(site, "vllm", "_version.py")):
    with open(os.path.join(site, "vllm", "_version.py")) as f:
        package = re.findall(r"^__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", f.read(), re.M)[:1] or None
doc = {
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
    "nvidia_smi_while_serving": smi,
    "vllm_version_endpoint": version,
    "vllm_package_version": package[0] if package else None,
    "planned_on_host": plan,
    "same_argv_as_planned_here": None if here is None else here["plan"]["argv"] == plan["plan"]["argv"],
    "launched": {"command": ["python3", "-m", "vllm.entrypoints.cli.main"] + plan["plan"]["argv"][1:],
                 "planner_env": plan["plan"]["env"],
                 "bundle_env": {k: os.environ.get(k) for k in ("VLLM_USE_FLASHINFER_SAMPLER", "TRANSFORMERS_OFFLINE",
                                                               "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")},
                 "model_link": {"/models/model": os.path.realpath("/models/model")}},
    "timings_s": {"server_start_to_engine_health_start": round(t1 - t0, 1),
                  "server_start_to_first_health_200": round(th - t0, 1) if th else None,
                  "server_start_to_engine_health_end": round(t2 - t0, 1)},
    "engine_health_rc": rc,
    "engine_health": health,
    "serve_log_excerpt": [line[:300] for line in log if keep.search(line)][-40:],
}
with open(os.path.join(out, "serve.json"), "w") as f:
    json.dump(doc, f, indent=1, sort_keys=True)
print(json.dumps({k: doc[k] for k in ("nvidia_smi_while_serving", "vllm_version_endpoint", "vllm_package_version",
                                       "same_argv_as_planned_here", "timings_s", "engine_health_rc")}))
print("HEALTH", json.dumps({k: (health or {}).get(k) for k in ("healthy", "time_to_healthy_s", "ttft_ms",
                                                                "tokens_per_s", "models", "engine_version", "msg")}))
PY
if [ "$HRC" = 0 ]; then echo SERVE_STAGE2_OK; else tail -60 "$OUT/serve.log"; exit 6; fi
