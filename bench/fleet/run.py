#!/usr/bin/env python3
"""Fleet-scale benchmark of site.yml: `.venv/bin/python bench/fleet/run.py` (docs/scale.md).

For each fleet size N (default 10, 25, 50) it brings up N fresh lab hosts of its own (labctl --fleet:
systemd, sshd and a nested Docker engine each, reached over SSH like production), then runs:

  first converge        site.yml on the fresh hosts, with the collection's ansible.cfg
  no-op                 site.yml again: the fast path (changed=0 required)
  no-op, stock          site.yml again with Ansible's stock settings (forks 5, no pipelining, no fact
                        cache, implicit gathering, linear strategy, Ansible's own ssh_args) and every task
                        run (preflight_fast_path=false): what the same playbook costs untuned
  no-op, stock + fast   stock settings, fast path on      } --variants: which of the two
  no-op, tuned, full    tuned settings, every task run    } parts of the tuning pays what
  rollout               playbooks/rollout.yml with a new served model name: every engine container is
                        replaced, canary first then 25% batches, each host proven healthy

and prints one table: wall time, per-host time, changed tasks, controller CPU (user+sys of ansible-playbook
and everything it started, SSH ControlMaster processes included) and peak controller memory (PSS of
that process tree, sampled every 0.25 s). Then the acceptance lines: the stock/tuned ratio of the no-op,
how the per-host cost grows from the smallest to the largest N, and CPU per host at the largest N.
Fleets are taken down at the end (--keep leaves the last one up). Results: bench/results/fleet/.
"""
import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import ensure_inotify, machine, markdown_table, sh  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
LABCTL = os.path.join(REPO_ROOT, "lab", "labctl.py")
OUT = os.path.join(REPO_ROOT, "bench", "results", "fleet")
FLEET = "scale"
STATE = os.path.join(REPO_ROOT, ".cache", "lab", "fleets", FLEET)
INVENTORY = os.path.join(STATE, "inventory")
GPUS = ["rtx4000", "rtx5090", "l40s", "h100-80gb-hbm3"]  # turing, blackwell, l40s, hopper in turn
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

# Ansible's own defaults for what the collection's ansible.cfg tunes.
STOCK_ENV = {
    "ANSIBLE_FORKS": "5",
    "ANSIBLE_PIPELINING": "False",
    "ANSIBLE_CACHE_PLUGIN": "memory",
    "ANSIBLE_GATHERING": "implicit",
    "ANSIBLE_STRATEGY": "linear",
    "ANSIBLE_SSH_ARGS": "-C -o ControlMaster=auto -o ControlPersist=60s",
}
FULL_PATH = ["-e", "preflight_fast_path=false"]
PR_SET_CHILD_SUBREAPER = 36


def write_fleet_file(size, path):
    hosts = {f"s{i:03d}": {"ip": f"172.28.60.{10 + i}", "gpu": GPUS[(i - 1) % len(GPUS)]} for i in range(1, size + 1)}
    with open(path, "w") as f:
        yaml.safe_dump({"name": FLEET, "network": {"name": f"gpufleet-{FLEET}", "subnet": "172.28.60.0/24",
                                                   "gateway": "172.28.60.1"},
                        "hf_server": {"port": 8099}, "hosts": hosts}, f)


def descendants(root_pids):
    """PIDs below the given ones (one pass over /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), list(root_pids)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def orphaned_ssh_masters():
    """ssh ControlMaster processes left by a run: ControlPersist detaches them, and as this process is a
    child subreaper they are re-parented here, so their CPU can be counted when they are reaped."""
    me, found = os.getpid(), []
    for pid in descendants([me]):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.split(" (", 1)[1].startswith("ssh)") and int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(pid)
    return found


def measured(args, env_extra=None):
    """Run ansible-playbook; return wall s, controller CPU s, peak PSS MiB, changed count, recap."""
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ["PATH"], ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_CACHE_PLUGIN_CONNECTION=os.path.join(STATE, "facts"), **(env_extra or {}))
    log_path = os.path.join(STATE, "last-run.log")
    peak, done = [0], threading.Event()
    with open(log_path, "w") as log:
        started = time.monotonic()
        proc = subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", INVENTORY, *args],
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

        def sample():
            while not done.is_set():
                pids = descendants([proc.pid]) | {proc.pid} | set(orphaned_ssh_masters())
                peak[0] = max(peak[0], sum(pss_kib(p) for p in pids))
                done.wait(0.25)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _unused, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        done.set()
        sampler.join()
    cpu = usage.ru_utime + usage.ru_stime
    for pid in orphaned_ssh_masters():  # each run pays for its own connections
        os.kill(pid, signal.SIGTERM)
        _unused, _unused2, master = os.wait4(pid, 0)
        cpu += master.ru_utime + master.ru_stime
    with open(log_path) as f:
        output = f.read()
    recap = {m.group(1): {"changed": int(m.group(3)), "unreachable": int(m.group(4)), "failed": int(m.group(5))}
             for m in RECAP.finditer(output)}
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0 or any(r["failed"] or r["unreachable"] for r in recap.values()):
        raise SystemExit(f"ansible-playbook {' '.join(args)} failed (rc={rc}); log: {log_path}\n{output[-4000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_mib": round(peak[0] / 1024),
            "changed": sum(r["changed"] for r in recap.values()), "recap": recap}


def bench_size(size, variants, fleet_file):
    write_fleet_file(size, fleet_file)
    sh([sys.executable, LABCTL, "down", "--fleet", fleet_file], cwd=REPO_ROOT)
    shutil.rmtree(os.path.join(STATE, "facts"), ignore_errors=True)
    t0 = time.monotonic()
    sh([sys.executable, LABCTL, "up", "--fleet", fleet_file], cwd=REPO_ROOT)
    print(f"[bench] N={size}: {size} fresh lab hosts up in {time.monotonic() - t0:.0f}s", flush=True)
    runs = [("first converge", ["site.yml"], None),
            ("no-op", ["site.yml"], None),
            ("no-op, stock", ["site.yml", *FULL_PATH], STOCK_ENV)]
    if variants:
        runs += [("no-op, stock + fast path", ["site.yml"], STOCK_ENV),
                 ("no-op, tuned, full path", ["site.yml", *FULL_PATH], None)]
    runs.append(("rollout", ["playbooks/rollout.yml", "-e", "engine_served_model_name=tiny-qwen2-rollout"], None))
    rows = []
    for name, args, env in runs:
        row = dict(measured(args, env), hosts=size, run=name)
        if name.startswith("no-op") and row["changed"]:
            raise SystemExit(f"N={size} {name}: changed={row['changed']}, not a no-op: {row['recap']}")
        del row["recap"]
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    return rows


def table(rows):
    head = ["N", "run", "wall s", "per host s", "changed", "controller CPU s", "CPU per host s", "peak memory MiB"]
    return markdown_table(head, [[str(r["hosts"]), r["run"], f"{r['wall_s']:g}", f"{r['wall_s'] / r['hosts']:.2f}",
                                  str(r["changed"]), f"{r['cpu_s']:g}", f"{r['cpu_s'] / r['hosts']:.2f}",
                                  str(r["peak_mib"])] for r in rows])


def verdicts(rows):
    """The issue's acceptance, computed from the rows."""
    pick = {(r["hosts"], r["run"]): r for r in rows}
    sizes = sorted({r["hosts"] for r in rows})

    def mark(ok):
        return "PASS" if ok else "FAIL"
    lines = []
    for n in sizes:
        tuned, stock = pick[(n, "no-op")], pick[(n, "no-op, stock")]
        ratio = stock["wall_s"] / tuned["wall_s"]
        lines.append(f"{mark(ratio >= 5 and tuned['changed'] == 0)} N={n}: no-op {tuned['wall_s']:g}s vs stock "
                     f"{stock['wall_s']:g}s: {ratio:.1f}x faster (target >= 5x), changed={tuned['changed']}")
    small, large = pick[(sizes[0], "no-op")], pick[(sizes[-1], "no-op")]
    for key, label in (("wall_s", "wall time"), ("cpu_s", "controller CPU")):
        growth = (large[key] / sizes[-1]) / (small[key] / sizes[0])
        lines.append(f"{mark(growth <= 1.5)} no-op per-host {label} N={sizes[-1]} / N={sizes[0]}: {growth:.2f} (target <= 1.5)")
    per_host = large["cpu_s"] / sizes[-1]
    lines.append(f"{mark(per_host <= 0.3)} no-op controller CPU at N={sizes[-1]}: {per_host:.3f} s per host (target <= 0.3)")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,25,50", help="fleet sizes, comma-separated (at most 240)")
    parser.add_argument("--variants", action="store_true",
                        help="also stock settings with the fast path, and tuned settings without it")
    parser.add_argument("--keep", action="store_true", help="leave the last fleet up")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # SSH masters detach from ansible-playbook; as a subreaper this process inherits them and counts them.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.makedirs(OUT, exist_ok=True)
    ensure_inotify(max(sizes) + 8)  # and the built-in lab's hosts, which may be up too
    fleet_file = os.path.join(OUT, "fleet.yml")
    rows, started = [], time.monotonic()
    try:
        for size in sizes:
            rows += bench_size(size, args.variants, fleet_file)
    finally:
        if not args.keep and os.path.exists(fleet_file):
            sh([sys.executable, LABCTL, "down", "--fleet", fleet_file], cwd=REPO_ROOT)
    commit = sh(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT).stdout.strip()
    result = {"machine": machine(), "commit": commit, "rows": rows, "verdicts": verdicts(rows),
              "wall_s": round(time.monotonic() - started)}
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{result['machine']}; commit {commit}; {result['wall_s']}s in all\n")
    print(table(rows))
    print("\n" + "\n".join(result["verdicts"]))


if __name__ == "__main__":
    main()
