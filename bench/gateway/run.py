#!/usr/bin/env python3
"""Requests dropped during a full rollout, with and without the gateway: `.venv/bin/python bench/gateway/run.py`.

On the built-in lab (lab/labctl.py up; gateway-1 runs the real smg router in front of the four engines of
tiny-qwen2), it converges site.yml, then twice replaces every engine (a new image tag each time, canary
first, then batches of one host) while an open-loop load of streamed chat completions runs at --rate
requests/s (default 20):

  gateway   clients send every request to the gateway (one endpoint); the rollout drains each host in
            the router before its engine is swapped (docs/gateway.md)
  direct    clients spread the same load round-robin over the four engines themselves, as they had to
            before the gateway; the same rollout

It prints, per scenario: requests sent and failed, p50/p99 latency before the rollout (the --warmup
seconds of load before it starts) and during it, and the rollout's wall time. Goal: 0 failed requests
through the gateway. The stand-in engines have no prefix cache: no policy comparison is made here.
Results: bench/results/gateway/.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import machine, markdown_table  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO_ROOT, "collections"))
from ansible_collections.gpufleet.serving.plugins.module_utils import loadgen  # noqa: E402

VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
OUT = os.path.join(REPO_ROOT, "bench", "results", "gateway")
GATEWAY = "http://172.28.10.20:30080"
MODEL = "tiny-qwen2"
HOSTS = ["turing-1", "blackwell-1", "l40s-1", "hopper-1"]
TAGS = ["gpufleet/engine-standin:0.1.0", "gpufleet/engine-standin:0.1.1"]


def site(*args):
    started = time.monotonic()
    res = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "site.yml", "-i", "inventories/lab", *args],
                         cwd=REPO_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ["PATH"]), check=False)
    if res.returncode != 0:
        raise SystemExit("site.yml failed:\n" + (res.stdout + res.stderr)[-4000:])
    return time.monotonic() - started


def engine_urls():
    """The four engines, where the Prometheus targets file of the last run says they listen."""
    with open(os.path.join(REPO_ROOT, ".cache", "prometheus", "gpufleet.json")) as f:
        return ["http://" + g["targets"][0] for g in json.load(f) if g["labels"]["exporter"] == "engine"]


def round_robin(urls, max_tokens):
    senders = [loadgen.chat_sender(url, MODEL, "Say hello", max_tokens, timeout=60) for url in urls]
    return lambda index: senders[index % len(senders)](index)


def scenario(name, send, rate, warmup, tag):
    load = loadgen.SteadyLoad(send, rate).start()
    time.sleep(warmup)
    start = load.elapsed()
    wall = site("-e", "engine_image=" + tag, "-e", '{"engine_image_archive": null}')
    end = load.elapsed()
    time.sleep(2)
    samples = load.stop()
    return {"scenario": name, "rollout_s": round(wall, 1), "all": loadgen.window_stats(samples),
            "before": loadgen.window_stats(samples, end=start), "during": loadgen.window_stats(samples, start, end)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load before the rollout starts")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    print(f"converging the lab ({machine()})", flush=True)
    site("-e", "engine_image=" + TAGS[0])
    for host in HOSTS:  # the second tag: the same image under a new name, so every engine is replaced
        subprocess.run(["docker", "exec", "gpufleet-lab-" + host, "docker", "tag", TAGS[0], TAGS[1]], check=True)

    results = []
    print("gateway: load through %s during a full rollout" % GATEWAY, flush=True)
    gateway_send = loadgen.chat_sender(GATEWAY, MODEL, "Say hello", args.max_tokens, timeout=60)
    results.append(scenario("gateway", gateway_send, args.rate, args.warmup, TAGS[1]))
    print("direct: the same load round-robin over the engines during a full rollout", flush=True)
    results.append(scenario("direct", round_robin(engine_urls(), args.max_tokens), args.rate, args.warmup, TAGS[0]))

    head = ["scenario", "sent", "failed", "p50 before ms", "p99 before ms", "p50 during ms", "p99 during ms",
            "rollout s"]
    rows = [[r["scenario"], str(r["all"]["sent"]), str(r["all"]["failed"]), str(r["before"]["p50_ms"]),
             str(r["before"]["p99_ms"]), str(r["during"]["p50_ms"]), str(r["during"]["p99_ms"]), str(r["rollout_s"])]
            for r in results]
    table = markdown_table(head, rows)
    gateway = results[0]["all"]
    verdict = ("%s gateway: %d of %d requests failed during a full rollout of 4 engines (goal 0); direct: %d of %d"
               % ("PASS" if gateway["failed"] == 0 else "FAIL", gateway["failed"], gateway["sent"],
                  results[1]["all"]["failed"], results[1]["all"]["sent"]))
    print(table)
    print(verdict)
    for r in results:
        if r["all"]["errors"]:
            print("%s, first errors: %s" % (r["scenario"], r["all"]["errors"][:3]))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"machine": machine(), "rate": args.rate, "results": results}, f, indent=2)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write("%s\n\n%s\n\n%s\n" % (machine(), table, verdict))
    return 0 if gateway["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
