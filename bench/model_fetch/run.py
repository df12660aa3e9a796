#!/usr/bin/env python3
"""Benchmark of model_fetch's modes on lab fleets: `.venv/bin/python bench/model_fetch/run.py`.

For each fleet size N (default 4 and 16) it brings up a lab fleet of its own (labctl --fleet), adds a
benchmark model (--model-mib, default 128 MiB in two LFS shards) to that fleet's HF server, and runs the
model_fetch role in each mode on empty hosts:

  per_host          every host downloads from the HF server. The server is on the LAN, so this is also
                    what a LAN mirror (a site Hub mirror / caching proxy) costs: N copies through it.
  fleet/controller  one download at the controller, rsync over SSH to every host, verified there.
  fleet/seed-host   one download at the first host, which pushes to the others over SSH.

Measured: bytes served by the HF server (its access log: the upstream traffic), total time, the
distribution step's time and throughput, the same files copied plainly between the same machines
(curl from the server for per_host, `rsync -a --whole-file` over SSH for the fleet modes) for comparison,
and a second run (changed tasks, downloads, time). Prints a table, writes bench/results/model_fetch/.
Fleets are taken down at the end (--keep to leave them).
"""
import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO_ROOT, "lab", "hf"))
from build_repos import commit, new_work_repo, publish  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import ensure_inotify, machine, markdown_table, sh  # noqa: E402

VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
LABCTL = os.path.join(REPO_ROOT, "lab", "labctl.py")
SSH_KEY = os.path.join(REPO_ROOT, ".cache", "lab", "ssh", "id_ed25519")
OUT = os.path.join(REPO_ROOT, "bench", "results", "model_fetch")
REPO_ID = "gpufleet/bench-model"
MODEL_DIR = "/srv/models/gpufleet--bench-model"
SSH = ["ssh", "-i", SSH_KEY, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR"]
PLAYBOOK = """
- name: Model snapshots
  hosts: gpu_hosts
  gather_facts: false
  roles:
    - gpufleet.serving.model_fetch
"""
MODES = {
    "per_host": {"model_fetch_mode": "per_host"},
    "fleet/controller": {"model_fetch_mode": "fleet"},
    "fleet/seed-host": {"model_fetch_mode": "fleet", "model_fetch_seed_ssh_key": "/root/.ssh/fleet_key"},
}
# Tasks (by name) that get the bytes onto the hosts, verified: per_host, download + verify at each host;
# fleet, what each host lacks + the transfer + the verification on arrival. COPY_TASKS: the transfer alone.
TO_HOSTS_TASKS = {"per_host": ("Each snapshot is present",),
                  "fleet": ("What each host lacks", "Hosts receive the files", "verified against the seed's manifest")}
COPY_TASKS = {"per_host": ("Each snapshot is present",), "fleet": ("Hosts receive the files",)}


class BenchFleet:
    def __init__(self, index, size, workdir):
        self.name = f"fetch{index}"
        self.hosts = [f"{self.name}-h{i:02d}" for i in range(1, size + 1)]
        self.ips = {host: f"172.28.3{index}.{10 + i}" for i, host in enumerate(self.hosts, 1)}
        self.gateway, self.port = f"172.28.3{index}.1", 8092 + index
        self.state = os.path.join(REPO_ROOT, ".cache", "lab", "fleets", self.name)
        self.access_log = os.path.join(self.state, "hf", "access.log")
        self.seed_root = os.path.join(self.state, "seed")
        self.workdir = workdir
        self.file = os.path.join(workdir, f"{self.name}.yml")
        with open(self.file, "w") as f:
            yaml.safe_dump({"name": self.name,
                            "network": {"name": f"gpufleet-{self.name}", "subnet": f"172.28.3{index}.0/24",
                                        "gateway": self.gateway},
                            "hf_server": {"port": self.port},
                            "hosts": {h: {"ip": self.ips[h], "gpu": "h100-80gb-hbm3"} for h in self.hosts}}, f)

    def labctl(self, command):
        sh([sys.executable, LABCTL, command, "--fleet", self.file], cwd=REPO_ROOT)

    def exec(self, host, script, **kw):
        return sh(["docker", "exec", f"gpufleet-{self.name}-{host}", "bash", "-c", script], **kw)

    def on_hosts(self, hosts, script):
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(lambda h: self.exec(h, script), hosts))

    def log_mark(self):
        return os.path.getsize(self.access_log)

    def served(self, since):
        """(bytes of file bodies served, max GETs of one file) since the mark."""
        total, per_file = 0, collections.Counter()
        with open(self.access_log) as f:
            f.seek(since)
            for line in f:
                _unused, _unused2, method, path, status, sent = line.split()
                if method == "GET" and "/resolve/" in path and status in ("200", "206"):
                    total += int(sent)
                    per_file[path] += 1
        return total, max(per_file.values(), default=0)


def add_bench_model(fleet, mib, shards):
    """A repo of `shards` LFS files of random bytes (deterministic) on the fleet's HF server:
    (commit sha, {file: size})."""
    bare = os.path.join(fleet.state, "hf", "repos", REPO_ID + ".git")
    shutil.rmtree(bare, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        work = os.path.join(tmp, "work")
        new_work_repo(work)
        rng = random.Random(42)
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, f)
        for i in range(1, shards + 1):
            with open(os.path.join(work, f"model-{i:05d}-of-{shards:05d}.safetensors"), "wb") as f:
                f.write(rng.randbytes(mib * 2**20 // shards))
        sha = commit(work, "bench model", "2025-03-01T00:00:00+00:00")
        publish(work, bare)
        files = {name: os.path.getsize(os.path.join(work, name)) for name in os.listdir(work) if name != ".git"}
    return sha, files


def run_playbook(fleet, playbook, variables):
    vars_file = os.path.join(fleet.workdir, "vars.json")
    with open(vars_file, "w") as f:
        json.dump(variables, f)
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_FORCE_COLOR="0",
               PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
    started = time.monotonic()
    res = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), playbook, "-i",
                          os.path.join(fleet.state, "inventory"), "-e", "@" + vars_file],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    try:
        report = json.loads(res.stdout[res.stdout.index("{"):])
    except ValueError:
        raise SystemExit(f"ansible-playbook printed no JSON (rc={res.returncode}):\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    failed = {h: s for h, s in report["stats"].items() if s["failures"] or s["unreachable"]}
    if res.returncode or failed:
        raise SystemExit(f"the {variables.get('model_fetch_mode')} run failed on {sorted(failed)}:\n{res.stdout[-5000:]}")
    return report, elapsed


def span(report, prefixes):
    """Seconds from the first start to the last end of the tasks named with one of `prefixes`."""
    starts, ends = [], []
    for task in report["plays"][0]["tasks"]:
        name = task["task"]["name"]
        if any(p in name for p in prefixes) and "end" in task["task"]["duration"]:
            if all(r.get("skipped") for r in task["hosts"].values()):
                continue
            starts.append(datetime.fromisoformat(task["task"]["duration"]["start"].replace("Z", "+00:00")))
            ends.append(datetime.fromisoformat(task["task"]["duration"]["end"].replace("Z", "+00:00")))
    return (max(ends) - min(starts)).total_seconds() if starts else None


def plain_copy(fleet, mode, files, hosts):
    """Seconds to copy the same files the plain way between the same machines, all targets at once."""
    if mode == "per_host":
        urls = " ".join(f"http://{fleet.gateway}:{fleet.port}/{REPO_ID}/resolve/main/{name}" for name in files)
        script = f"mkdir -p /srv/plain && cd /srv/plain && for u in {urls}; do curl -sfO \"$u\"; done"
        started = time.monotonic()
        fleet.on_hosts(hosts, script)
    elif mode == "fleet/controller":
        seed = os.path.join(fleet.seed_root, "gpufleet--bench-model")

        def push(host):
            sh(["rsync", "-a", "--whole-file", "--exclude=.gpufleet-snapshot.json", "-e", " ".join(SSH),
                f"{seed}/", f"root@{fleet.ips[host]}:/srv/plain/"])
        started = time.monotonic()
        with ThreadPoolExecutor(len(hosts)) as pool:
            list(pool.map(push, hosts))
    else:
        ssh = "ssh -i /root/.ssh/fleet_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        started = time.monotonic()
        fleet.on_hosts([fleet.hosts[0]], " & ".join(
            f"rsync -a --whole-file --exclude=.gpufleet-snapshot.json -e '{ssh}' {MODEL_DIR}/ root@{fleet.ips[h]}:/srv/plain/"
            for h in hosts) + " & wait")
    elapsed = time.monotonic() - started
    fleet.on_hosts(hosts, "rm -rf /srv/plain")
    return elapsed


def bench_mode(fleet, playbook, mode, sha, files):
    seed_host = fleet.hosts[0]
    variables = dict(MODES[mode], model_fetch_repo_id=REPO_ID, model_fetch_revision=sha,
                     model_fetch_controller_root=fleet.seed_root)
    if mode == "fleet/seed-host":
        variables["model_fetch_seed_host"] = seed_host
    fleet.on_hosts(fleet.hosts, "rm -rf /srv/models /srv/plain; sync")
    shutil.rmtree(fleet.seed_root, ignore_errors=True)
    mark = fleet.log_mark()
    report, total_s = run_playbook(fleet, playbook, variables)
    served, max_per_file = fleet.served(mark)
    kind = mode.split("/")[0]
    to_hosts_s, copy_s = span(report, TO_HOSTS_TASKS[kind]), span(report, COPY_TASKS[kind])
    # Bytes that crossed the LAN to hosts in the distribution step.
    model_bytes = sum(files.values())
    receivers = fleet.hosts[1:] if mode == "fleet/seed-host" else fleet.hosts
    lan_bytes = served if mode == "per_host" else model_bytes * len(receivers)
    plain_s = plain_copy(fleet, mode, files, receivers)

    mark = fleet.log_mark()
    report2, second_s = run_playbook(fleet, playbook, variables)
    changed2 = sum(s["changed"] for s in report2["stats"].values())
    served2, _unused = fleet.served(mark)
    return {"hosts": len(fleet.hosts), "mode": mode, "model_bytes": model_bytes, "upstream_bytes": served,
            "upstream_x_model": round(served / model_bytes, 2), "max_gets_per_file": max_per_file,
            "total_s": round(total_s, 1), "to_hosts_s": round(to_hosts_s, 1),
            "to_hosts_mb_s": round(lan_bytes / to_hosts_s / 1e6, 1), "lan_bytes": lan_bytes,
            "copy_s": round(copy_s, 1), "copy_mb_s": round(lan_bytes / copy_s / 1e6, 1),
            "plain_s": round(plain_s, 1), "plain_mb_s": round(lan_bytes / plain_s / 1e6, 1),
            "second_run_s": round(second_s, 1), "second_run_changed": changed2, "second_run_upstream_bytes": served2}


def table(rows):
    head = ["N", "mode", "HF server bytes", "x model", "total s", "to hosts s (MB/s)", "copy step s (MB/s)",
            "plain copy s (MB/s)", "2nd run s", "2nd: changed, bytes"]
    return markdown_table(head, [
        [str(r["hosts"]), r["mode"], f"{r['upstream_bytes']:,}", f"{r['upstream_x_model']:g}",
         f"{r['total_s']:g}", f"{r['to_hosts_s']:g} ({r['to_hosts_mb_s']:g})",
         f"{r['copy_s']:g} ({r['copy_mb_s']:g})", f"{r['plain_s']:g} ({r['plain_mb_s']:g})",
         f"{r['second_run_s']:g}", f"{r['second_run_changed']}, {r['second_run_upstream_bytes']}"]
        for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16", help="fleet sizes, comma-separated (at most 7 fleets)")
    parser.add_argument("--model-mib", type=int, default=128)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--keep", action="store_true", help="leave the fleets up")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    os.makedirs(OUT, exist_ok=True)
    ensure_inotify(max(sizes) + 8)  # and the built-in lab's hosts, which may be up too
    rows, started = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-model-fetch-") as workdir:
        playbook = os.path.join(workdir, "model_fetch.yml")
        with open(playbook, "w") as f:
            f.write(PLAYBOOK)
        for index, size in enumerate(sizes, start=2):
            fleet = BenchFleet(index, size, workdir)
            t0 = time.monotonic()
            fleet.labctl("up")
            print(f"[bench] {fleet.name}: {size} hosts up in {time.monotonic() - t0:.0f}s", flush=True)
            try:
                sha, files = add_bench_model(fleet, args.model_mib, args.shards)
                # The seed host's key to the other hosts (a fleet-internal key in production).
                sh(["docker", "cp", SSH_KEY, f"gpufleet-{fleet.name}-{fleet.hosts[0]}:/root/.ssh/fleet_key"])
                fleet.exec(fleet.hosts[0], "chmod 600 /root/.ssh/fleet_key")
                for mode in modes:
                    row = bench_mode(fleet, playbook, mode, sha, files)
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
            finally:
                if not args.keep:
                    fleet.labctl("down")
                    shutil.rmtree(fleet.state, ignore_errors=True)
    result = {"machine": machine(), "model_mib": args.model_mib, "shards": args.shards, "rows": rows,
              "wall_s": round(time.monotonic() - started)}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{args.model_mib} MiB model in {args.shards} shards; {result['machine']}; {result['wall_s']}s in all\n")
    print(table(rows))


if __name__ == "__main__":
    main()
