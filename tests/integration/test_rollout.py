"""Issue 5 end to end on the rollout fleet (tests/integration/fleets/rollout.yml: three hosts on their
own network beside the built-in lab, brought up and down here): SGLang and vLLM per group, changed=0
on a second run, the API key nowhere but the root-only file, the benchmark's CSV and plots, a canary
that fails (missing image; engine that crashes at start) put back on its last good container with
no other host touched, a host lost mid-rollout while the others finish, and two engines replacing
one on a two-GPU host.

The tests run in file order and share the fleet: each starts from the state the previous one left.
"""
import csv
import datetime
import json
import os
import re
import secrets
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml
import lab
from lab import RECAP_LINE, REPO_ROOT, VENV_BIN, ansible_env

from ansible_collections.gpufleet.serving.plugins.plugin_utils import knowledge

pytestmark = pytest.mark.lab

FLEET_FILE = os.path.join(REPO_ROOT, "tests", "integration", "fleets", "rollout.yml")
INVENTORY = os.path.join(REPO_ROOT, ".cache", "lab", "fleets", "rollout", "inventory")
PREFIX = "gpufleet-rollout-"
CANARY = "r-hopper-1"                     # first in inventory order: the rollout's canary
OTHERS = ["r-l40s-1", "r-turing-1"]
HOSTS = [CANARY] + OTHERS
ENGINES = {"r-hopper-1": "sglang", "r-l40s-1": "sglang", "r-turing-1": "vllm"}
PORTS = {"sglang": 30000, "vllm": 8000}
KEY = "gpufleet-test-key-" + secrets.token_hex(12)
# One batch after the canary keeps the runs short; the batch logic is the same for any size.
FAST = ["-e", "rollout_batch_size=100%"]


def labctl(command):
    return lab.labctl(FLEET_FILE, command)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The rollout fleet, up for this module and down after it (so the lab tests that follow do not
    share this 2-core machine with it). A fleet left by an interrupted session is removed first: the tests
    start from bare hosts. A missing prerequisite skips, or fails under GPUFLEET_REQUIRE_LAB."""
    lab.fresh_fleet(FLEET_FILE, "rollout")
    work = tmp_path_factory.mktemp("rollout")
    # What a vault file holds in production; passed with -e @file like one.
    secret_vars = work / "secrets.yml"
    secret_vars.write_text(json.dumps({"engine_api_key": KEY}))
    secret_vars.chmod(0o600)
    yield {"work": work, "secrets": str(secret_vars)}
    down = labctl("down")
    assert down.returncode == 0, down.stderr


def run(fleet, playbook, *args):
    """ansible-playbook on the rollout fleet with the API key; returns (rc, output, recap by host)."""
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), playbook, "-i", INVENTORY, "-e", "@" + fleet["secrets"],
           "-e", "rollout_prometheus_file_sd=%s" % (fleet["work"] / "file_sd.json"), *args]
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=ansible_env(), capture_output=True, text=True, check=False)
    return res.returncode, res.stdout + res.stderr, recap_of(res.stdout)


def recap_of(output):
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)), "unreachable": int(m.group(4)),
                         "failed": int(m.group(5))} for m in RECAP_LINE.finditer(output)}


def hx(host, script):
    return subprocess.run(["docker", "exec", PREFIX + host, "bash", "-c", script], capture_output=True, text=True, check=False)


def containers(host):
    """{name: (id, started_at, image, running)} of every container in the host's own Docker."""
    out = hx(host, "docker ps -aq | xargs -r docker inspect").stdout
    return {c["Name"].lstrip("/"): (c["Id"], c["State"]["StartedAt"], c["Config"]["Image"], c["State"]["Running"])
            for c in json.loads(out or "[]")}


def engine(host):
    return containers(host).get("gpufleet-engine")


def http(host, path, key=None, port=None):
    """(status, body) of a request from inside the host to its engine."""
    auth = "-H 'Authorization: Bearer %s'" % key if key else ""
    res = hx(host, "curl -s -o /tmp/body -w '%%{http_code}' %s http://127.0.0.1:%d%s; echo; cat /tmp/body"
             % (auth, port or PORTS[ENGINES[host]], path))
    status, _unused, body = res.stdout.partition("\n")
    return int(status or 0), body


def report_rows(output, task):
    """{host: table row} of the report printed by the last `task`."""
    rows = {}
    for line in lab.task_msg(output, task):
        words = line.split()
        if words and words[0] in HOSTS:
            rows[words[0]] = line
    return rows


def readable_files_with(text):
    """{host: world-readable files holding `text`}: the root filesystem, and Docker's own (a separate
    volume in the lab hosts) where it is per container: config, logs, the engine's writable layer.
    A planted file proves the search finds what is there."""
    planted = "/tmp/gpufleet-search-check"
    script = ("echo 'check-%s' > %s && chmod 644 %s && "
              "{ find / -xdev -type f -perm -o=r -print0 2>/dev/null; "
              "find /var/lib/docker/containers \"$(docker inspect -f '{{.GraphDriver.Data.UpperDir}}' gpufleet-engine)\" "
              "-type f -perm -o=r -print0; } | xargs -0 grep -lF -e '%s' -e 'check-%s' 2>/dev/null; rm %s"
              % (text[::-1], planted, planted, text, text[::-1], planted))
    procs = {h: subprocess.Popen(["docker", "exec", PREFIX + h, "bash", "-c", script], stdout=subprocess.PIPE,
                                 text=True) for h in HOSTS}  # in parallel: each reads about 1 GB
    found = {h: p.communicate()[0].split() for h, p in procs.items()}
    assert all(planted in files for files in found.values()), found
    return {h: [f for f in files if f != planted] for h, files in found.items()}


@pytest.fixture(scope="module")
def first_run(fleet):
    """site.yml on the fresh fleet at -vvvv, so the key check below sees everything Ansible can print."""
    return run(fleet, "site.yml", "-vvvv", *FAST)


def test_site_deploys_sglang_and_vllm_per_group_canary_first(first_run):
    rc, output, recap = first_run
    assert rc == 0, output[-5000:]
    assert all(recap[h]["failed"] == 0 and recap[h]["unreachable"] == 0 for h in HOSTS), recap
    rows = report_rows(output, "Fleet summary")
    for host in HOSTS:
        assert "healthy" in rows[host] and rows[host].split()[-1] == "updated", rows[host]
        inspect = json.loads(hx(host, "docker inspect gpufleet-engine").stdout)[0]
        want = ["vllm", "serve"] if ENGINES[host] == "vllm" else ["python3", "-m", "sglang.launch_server"]
        assert inspect["Config"]["Entrypoint"] == want
        assert inspect["Config"]["Labels"]["gpufleet.engine"] == ENGINES[host]
        assert "HF_HUB_OFFLINE=1" in inspect["Config"]["Env"]
        assert any(m["Destination"] == "/models/model" and not m["RW"] for m in inspect["Mounts"])
    # The canary was proven healthy before the next batch started.
    canary_started = engine(CANARY)[1]
    assert all(engine(h)[1] > canary_started for h in OTHERS)


def test_prometheus_targets_cover_the_fleet(fleet, first_run):
    groups = json.loads((fleet["work"] / "file_sd.json").read_text())
    by_host = {g["labels"]["host"]: g for g in groups}
    assert sorted(by_host) == sorted(HOSTS)
    assert by_host["r-turing-1"]["targets"] == ["172.28.20.11:8000"]
    assert by_host["r-turing-1"]["labels"]["engine"] == "vllm"
    assert by_host[CANARY]["labels"]["gpu"] == "1x NVIDIA H100 80GB HBM3"
    assert {g["labels"]["model"] for g in groups} == {"gpufleet/tiny-qwen2"}
    for host in HOSTS:  # every engine serves /metrics (SGLang with --enable-metrics)
        status, body = http(host, "/metrics")
        assert status == 200 and ENGINES[host] + ":" in body


def test_api_key_is_required_and_never_exposed(first_run):
    rc, output, _unused = first_run
    assert KEY not in output, "the API key is in the -vvvv output"
    for host in HOSTS:
        assert http(host, "/v1/models")[0] == 401
        assert http(host, "/v1/models", "wrong-key")[0] == 401
        status, body = http(host, "/v1/models", KEY)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2"
        assert KEY not in hx(host, "docker inspect gpufleet-engine").stdout          # Cmd, Args, Env, labels
        assert KEY not in hx(host, "ps -eww -o args").stdout                        # argv of every process
        assert KEY not in hx(host, "docker exec gpufleet-engine cat /proc/1/environ").stdout
        assert KEY not in hx(host, "docker logs gpufleet-engine 2>&1").stdout
        # The one place it is: the root-only file the engine reads through --config.
        holder = hx(host, "grep -rlF -- '%s' /etc/gpufleet; stat -c '%%a %%U' /etc/gpufleet/*/*" % KEY).stdout.split("\n")
        assert holder[0].startswith("/etc/gpufleet/gpufleet-engine/") and holder[1] == "600 root", holder
    assert readable_files_with(KEY) == {h: [] for h in HOSTS}


def test_second_run_changes_nothing(fleet, first_run):
    before = {h: engine(h) for h in HOSTS}
    rc, output, recap = run(fleet, "site.yml", *FAST)
    assert rc == 0, output[-4000:]
    assert {h: r["changed"] for h, r in recap.items()} == {h: 0 for h in recap}, output[-4000:]
    assert {h: engine(h) for h in HOSTS} == before, "an engine container was restarted"
    rows = report_rows(output, "Fleet summary")
    assert all(rows[h].split()[-1] == "unchanged" for h in HOSTS), rows


def test_benchmark_writes_csv_and_plot_per_group(fleet, first_run):
    out = fleet["work"] / "bench"
    rc, output, _unused = run(fleet, "playbooks/benchmark.yml", "-e", "benchmark_output_dir=%s" % out,
                              "-e", "benchmark_requests=6", "-e", "benchmark_max_tokens=16")
    assert rc == 0, output[-4000:]
    assert sorted(os.listdir(out)) == ["hopper.csv", "hopper.svg", "l40s.csv", "l40s.svg", "turing.csv", "turing.svg"]
    # One host per group here; the CSV and plot of a group of several hosts: tests/unit/test_loadgen.py.
    for group, host in (("hopper", CANARY), ("l40s", "r-l40s-1"), ("turing", "r-turing-1")):
        with open(out / ("%s.csv" % group)) as f:
            rows = list(csv.DictReader(f))
        assert {r["host"] for r in rows} == {host}, rows
        levels = [r for r in rows if r["host"] == host]
        assert [int(r["concurrency"]) for r in levels] == [1, 5, 10, 20]
        assert all(int(r["ok"]) == max(6, int(r["concurrency"])) and r["errors"] == "0" for r in levels)
        assert all(float(r["tokens_per_s"]) > 0 and float(r["ttft_ms_p50"]) > 0 for r in levels)
    assert ET.parse(out / "turing.svg").getroot().tag.endswith("svg")
    assert KEY not in output


def assert_untouched(before):
    for host in OTHERS:
        assert engine(host) == before[host], "%s was touched" % host
        assert set(containers(host)) == {"gpufleet-engine"}


def test_missing_image_on_the_canary_stops_the_rollout_before_any_change(fleet, first_run):
    """A tag that does not exist fails the canary before its container is touched. Two hosts are
    enough here (the crash test below watches the whole fleet)."""
    other = "r-turing-1"
    before = {h: engine(h) for h in HOSTS}
    rc, output, recap = run(fleet, "site.yml", *FAST, "--limit", "%s,%s" % (CANARY, other),
                            "-e", "engine_image=gpufleet/engine-standin:does-not-exist")
    assert rc != 0
    assert {h: engine(h) for h in HOSTS} == before          # the canary's container never even stopped
    assert recap[CANARY]["failed"] == 1 and recap[other]["failed"] == 0
    rows = report_rows(output, "gpufleet.serving.engine : The fleet as it stands")
    assert "healthy" in rows[CANARY] and rows[CANARY].split()[-1] == "FAILED", rows
    assert "not reached" in rows[other] and rows[other].split()[-1] == "NOT-ROLLED-OUT", rows   # the stop left it
    assert "does-not-exist" in output and "no container was changed, now healthy" in output


def test_engine_crashing_at_start_on_the_canary_is_rolled_back(fleet, first_run):
    """A new image whose engine dies at start (here: its Python cannot import the server, as a broken
    build does) passes the planner, starts, and fails the health gate: the canary goes back to the
    very container it ran before, and the rollout stops there."""
    lab_image = engine(CANARY)[2]                          # the table's image of its engine version
    made = hx(CANARY, "docker create --name mk %s >/dev/null && "
                      "docker commit --change 'ENV PYTHONPATH=/opt/engine-missing' mk gpufleet/engine-standin:0.2.0 && "
                      "docker rm mk" % lab_image)
    assert made.returncode == 0, made.stderr
    before = {h: engine(h) for h in HOSTS}
    rc, output, recap = run(fleet, "site.yml", *FAST, "-e", "engine_image=gpufleet/engine-standin:0.2.0",
                            "-e", '{"engine_image_archive": null}')
    fleet["crash_run"] = (rc, output, before)               # test_a_failed_canary_still_ends_with_... reads it
    assert rc != 0
    restored = engine(CANARY)
    assert restored[0] == before[CANARY][0] and restored[2] == lab_image and restored[3]
    assert restored[1] != before[CANARY][1]                 # it was stopped for the new one, then started again
    assert set(containers(CANARY)) == {"gpufleet-engine"}   # the failed one removed, no -previous left
    status, body = http(CANARY, "/v1/models", KEY)
    assert status == 200 and "tiny-qwen2" in body
    assert_untouched(before)
    assert recap[CANARY]["failed"] == 1 and recap[CANARY]["changed"] > 0
    rows = report_rows(output, "gpufleet.serving.engine : The fleet as it stands")
    assert "healthy" in rows[CANARY] and rows[CANARY].split()[-1] == "ROLLED-BACK", rows
    assert "No module named 'sglang'" in output
    assert "rolled back to the previous container (gpufleet-engine: %s), now healthy" % lab_image in output


MODEL_HOME = "/srv/models/gpufleet--tiny-qwen2"
MAIN_SHA = "38f9117fe9090e70c2089b9fa8c25e5f960fb1fd"   # the lab repo's main: v1.0 + README.md, other generation_config


def model_mount(host):
    """(host dir mounted at /models/model, the gpufleet.model_sha label) of the host's engine."""
    inspect = json.loads(hx(host, "docker inspect gpufleet-engine").stdout)[0]
    source = next(m["Source"] for m in inspect["Mounts"] if m["Destination"] == "/models/model")
    return source, inspect["Config"]["Labels"]["gpufleet.model_sha"]


def dir_state(host, path):
    """Every file of a dir (its manifest included): name, inode, size, mtime and sha256."""
    return hx(host, "cd %s && find . -type f -printf '%%P %%i %%s %%T@\\n' | sort && "
                    "find . -type f -print0 | sort -z | xargs -0 sha256sum" % path).stdout


def test_a_model_change_with_a_failed_canary_leaves_every_other_host_on_its_commit(fleet, first_run):
    """Issue 16: a new model commit and an engine that crashes at start on the canary. The host stack fetches the
    new commit on every host into a dir of its own; no engine's files change before its rollout batch. The canary
    is rolled back to its container, which mounts the old commit's dir (its label says so) and is healthy; the
    other hosts' engines never restart and their files and manifests are as they were."""
    if hx(CANARY, "docker image inspect gpufleet/engine-standin:0.2.0").returncode:   # made by the crash test
        made = hx(CANARY, "docker create --name mk %s >/dev/null && docker commit --change "
                          "'ENV PYTHONPATH=/opt/engine-missing' mk gpufleet/engine-standin:0.2.0 && docker rm mk"
                  % engine(CANARY)[2])
        assert made.returncode == 0, made.stderr
    before = {h: engine(h) for h in HOSTS}
    mounts = {h: model_mount(h) for h in HOSTS}
    assert all(src.startswith(MODEL_HOME + "/snapshots/") and src.endswith(sha) for src, sha in mounts.values()), mounts
    files = {h: dir_state(h, mounts[h][0]) for h in HOSTS}
    assert all(".gpufleet-snapshot.json" in f and "model.safetensors" in f for f in files.values()), files
    rc, output, recap = run(fleet, "site.yml", *FAST, "-e", "model_fetch_revision=" + MAIN_SHA,
                            "-e", "engine_image=gpufleet/engine-standin:0.2.0", "-e", '{"engine_image_archive": null}')
    assert rc != 0 and recap[CANARY]["failed"] == 1, output[-4000:]
    rows = report_rows(output, "gpufleet.serving.engine : The fleet as it stands")
    assert rows[CANARY].split()[-1] == "ROLLED-BACK", rows
    for host in HOSTS:
        # The new commit waits beside the old one, complete, for the host's next rollout.
        new = json.loads(hx(host, "cat %s/snapshots/%s/.gpufleet-snapshot.json" % (MODEL_HOME, MAIN_SHA)).stdout)
        assert new["commit_sha"] == MAIN_SHA and new["host"] == host
        assert model_mount(host) == mounts[host], host            # the old commit's dir, labelled with it
        assert dir_state(host, mounts[host][0]) == files[host], "%s: the mounted snapshot changed" % host
    assert_untouched(before)                                      # never restarted, nothing -previous
    restored = engine(CANARY)
    assert restored[0] == before[CANARY][0] and restored[3] and set(containers(CANARY)) == {"gpufleet-engine"}
    status, body = http(CANARY, "/v1/models", KEY)
    assert status == 200 and "tiny-qwen2" in body


def test_host_lost_mid_rollout_the_others_finish(fleet, first_run):
    """A real change (a new served model name) rolls out; while the pause after the canary runs, one host
    of the next batch stops answering SSH. Within rollout_max_fail_percentage the others finish and
    the report names the lost host."""
    lost = "r-l40s-1"
    before = {h: engine(h) for h in HOSTS}
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "site.yml", "-i", INVENTORY, "-e", "@" + fleet["secrets"],
           "-e", "rollout_prometheus_file_sd=%s" % (fleet["work"] / "file_sd.json"), *FAST,
           "-e", "engine_served_model_name=tiny-qwen2-b", "-e", "rollout_max_fail_percentage=50",
           "-e", "rollout_pause_between_batches=true", "-e", "rollout_pause_seconds=4"]
    rc, output, blocked = lab.run_losing_host_at_pause(cmd, PREFIX + lost)
    assert blocked is not None and blocked.returncode == 0, output[-3000:]
    # 2, not 4: the rollout's probe found the host lost (no task of the run is unreachable on it), and the outcome
    # play fails it once the report, the targets and the locks are done.
    assert rc == 2, output[-4000:]
    recap = recap_of(output)
    assert recap[lost]["unreachable"] == 0 and recap[lost]["failed"] == 1, recap
    assert "fatal: [%s]: FAILED!" % lost in output, output[-3000:]
    assert all(recap[h]["failed"] == 0 and recap[h]["unreachable"] == 0 for h in HOSTS if h != lost), recap
    rows = report_rows(output, "gpufleet.serving.engine : Report - every host")
    assert rows[lost].split()[-1] == "UNREACHABLE/FAILED", rows
    for host in HOSTS:
        if host == lost:
            assert engine(host) == before[host]             # never reached: still the old engine
            continue
        assert rows[host].split()[-1] == "updated" and "healthy" in rows[host], rows[host]
        status, body = http(host, "/v1/models", KEY)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2-b"
        assert set(containers(host)) == {"gpufleet-engine"}  # the replaced one removed once healthy
    # The canary went first; the next batch started only after its health gate and the pause.
    assert engine("r-turing-1")[1] > engine(CANARY)[1]


def test_two_engines_on_one_host_replace_its_single_engine(fleet, first_run):
    """engine_instances: one engine per GPU, each with its port; the single engine they replace is
    retired once both are healthy."""
    host = "r-l40s-1"                                      # two (simulated) L40S
    instances = [{"name": "eng-a", "gpus": [0], "port": 30001}, {"name": "eng-b", "gpus": [1], "port": 30002}]
    before_sd = json.loads((fleet["work"] / "file_sd.json").read_text())
    rc, output, recap = run(fleet, "site.yml", "--limit", host, "-e", json.dumps({"engine_instances": instances}))
    assert rc == 0, output[-4000:]
    assert set(containers(host)) == {"eng-a", "eng-b"}      # gpufleet-engine retired, nothing -previous left
    for spec in instances:
        args = json.loads(hx(host, "docker inspect -f '{{json .Config.Cmd}}' %s" % spec["name"]).stdout)
        assert args[args.index("--port") + 1] == str(spec["port"]) and args[args.index("--tp-size") + 1] == "1"
        status, body = http(host, "/v1/models", KEY, port=spec["port"])
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2"
    row = report_rows(output, "gpufleet.serving.engine : Report - every host")[host]
    assert "healthy" in row and row.split()[-1] == "updated" and "->none" in row, row
    targets = json.loads((fleet["work"] / "file_sd.json").read_text())
    assert sorted(t for g in targets if g["labels"]["host"] == host for t in g["targets"]) == [
        "172.28.20.13:30001", "172.28.20.13:30002"]
    # a --limit run keeps the rest of the fleet's targets as the file had them
    assert [g for g in targets if g["labels"]["host"] != host] == [g for g in before_sd if g["labels"]["host"] != host]


def test_a_removed_api_key_leaves_no_key_on_the_host(fleet, first_run):
    """engine_api_key removed from the inventory: the engine serves without one and its secrets
    directory is gone once the new engine is healthy. (Put back by the next test's first run, the key is
    required again: that test checks it.)"""
    host = "r-turing-1"
    rc, output, recap = run(fleet, "site.yml", "--limit", host, "-e", '{"engine_api_key": null}')
    assert rc == 0, output[-4000:]
    assert hx(host, "test -e /etc/gpufleet/gpufleet-engine").returncode != 0, "the secrets directory is still there"
    assert http(host, "/v1/models")[0] == 200


def rollout_batches(output):
    """[[hosts]] of each batch of the rollout play, in order (the canary first)."""
    batches = []
    for section in output.split("PLAY [Roll the engine out")[1:]:
        section = section.split("\nPLAY [", 1)[0]
        batches.append(sorted(set(re.findall(r"^(?:ok|changed|fatal): \[([^\]\s]+)", section, re.M))))
    return batches


def changed_tasks(output):
    """[(task, host)] of every `changed: [host]` line of a run."""
    found = []
    for section in output.split("\nTASK [")[1:]:
        task = section.split("]", 1)[0]
        found += [(task, h) for h in re.findall(r"^changed: \[([^\]\s]+)", section, re.M)]
    return found


def test_engine_version_upgrade_of_a_group_is_a_normal_rollout(fleet, first_run):
    """Issue 14: the vLLM group pinned in the inventory to an older engine version of the knowledge table,
    then unpinned (default: the newest), is upgraded by an ordinary run: only its host is rolled out,
    canary first, the report says before->after, and the engine - the stand-in tagged as that version's
    image, checking that version's flags - reports the version the planner chose."""
    host, group = "r-turing-1", "turing"                  # the rollout fleet's vLLM group
    kn = knowledge.load_knowledge()
    versions = sorted(knowledge.engine_versions(kn, "vllm"), key=knowledge.version_tuple)
    assert len(versions) >= 2, "knowledge table %s has one vLLM version" % kn["table_version"]
    old, newest = versions[-2:]                             # the previous release, and the default
    image = {v: "%s:%s" % (kn["engines"]["vllm"][v]["image"]["repo"], kn["engines"]["vllm"][v]["image"]["tag"])
             for v in (old, newest)}
    # An inventory source of its own, read after hosts.yml (name order), so the inventory order stays as it was.
    pin = os.path.join(INVENTORY, "pinned-engine-version.yml")
    with open(pin, "w") as f:
        f.write(json.dumps({"all": {"children": {"gpu_hosts": {"children": {group: {"vars": {"engine_version": old}}}}}}}))
    try:
        rc, output, recap = run(fleet, "site.yml", *FAST)   # also converges whatever earlier tests left
    finally:
        os.remove(pin)
    assert rc == 0, output[-4000:]
    # The key the previous test removed from this host is back and required again.
    assert http(host, "/v1/models")[0] == 401 and http(host, "/v1/models", KEY)[0] == 200
    assert engine(host)[2] == image[old] and json.loads(http(host, "/version")[1]) == {"version": old}
    assert hx(host, "docker exec gpufleet-engine vllm --version").stdout.strip() == old

    before = {h: engine(h) for h in HOSTS}
    rc, output, recap = run(fleet, "site.yml", *FAST)
    assert rc == 0, output[-4000:]
    assert rollout_batches(output) == [[host]]            # the only host to change: the canary, alone
    assert recap[host]["changed"] > 0, recap
    # Elsewhere only the Prometheus file changed (its engine_version label; a run_once task, counted on the
    # first host of the play).
    assert {t for t, h in changed_tasks(output) if h != host} <= {
        "gpufleet.serving.engine : The file_sd file lists every engine, gateway (and DCGM exporter) with host, "
        "engine, model and GPU labels"}, changed_tasks(output)
    rows = report_rows(output, "gpufleet.serving.engine : Report - every host")
    assert "vllm-%s@" % old in rows[host] and "->vllm-%s@" % newest in rows[host], rows[host]
    assert "healthy" in rows[host] and rows[host].split()[-1] == "updated", rows[host]
    for other in HOSTS:
        if other != host:
            assert "->" not in rows[other] and rows[other].split()[-1] in ("unchanged", "-"), rows[other]
            assert engine(other) == before[other]
    assert engine(host)[2] == image[newest] and engine(host)[0] != before[host][0]
    assert set(containers(host)) == {"gpufleet-engine"}  # the old version's container removed once healthy
    assert json.loads(http(host, "/version")[1]) == {"version": newest}
    assert hx(host, "docker exec gpufleet-engine vllm --version").stdout.strip() == newest


def test_a_failed_canary_still_ends_with_the_report_targets_and_locks_given_back(fleet, first_run):
    """The crashing canary's run above (no run of its own): the rollout stops, yet the closing plays run - the
    report names the rolled-back canary and the hosts not rolled out, the Prometheus targets are written
    with every host, the run locks are given back - and the run fails with the stop's message."""
    if "crash_run" not in fleet:
        pytest.skip("needs test_engine_crashing_at_start_on_the_canary_is_rolled_back's run")
    rc, output, before = fleet["crash_run"]
    assert rc == 2, output[-3000:]
    rows = report_rows(output, "gpufleet.serving.engine : Report - every host")
    assert rows[CANARY].split()[-1] == "ROLLED-BACK", rows
    assert all(rows[h].split()[-1] == "NOT-ROLLED-OUT" for h in OTHERS), rows
    stop = "Rollout stopped after batch %s: %s failed" % (CANARY, CANARY)
    assert stop in lab.task_msg(output, "gpufleet.serving.engine : Report - every host")[-1]
    assert "Not rolled out, left as they are: %s." % ", ".join(OTHERS) in output
    assert "TASK [gpufleet.serving.engine : The file_sd file lists" in output
    assert sorted({g["labels"]["host"] for g in json.loads((fleet["work"] / "file_sd.json").read_text())}) == sorted(HOSTS)
    assert "TASK [gpufleet.serving.preflight : Give back the run lock]" in output
    assert re.search(r"fatal: \[localhost\]: FAILED! =>\s+(?:changed: false\s+)?msg: '?Rollout stopped after batch",
                     output), output[-3000:]


def test_a_host_back_with_its_previous_container_running_converges_in_one_run(fleet, first_run):
    """A controller killed mid-swap (or a reboot with the restart policy) leaves gpufleet-engine-previous
    running, holding the engine's port: on one host with no gpufleet-engine beside it, on another beside
    a gpufleet-engine that never started. One run makes the running container current again and
    converges both (a new container would fail with "port is already allocated")."""
    alone, beside = "r-l40s-1", "r-turing-1"
    ids = {}
    for host in (alone, beside):
        ids[host] = engine(host)[0]
        image = engine(host)[2]
        assert hx(host, "docker rename gpufleet-engine gpufleet-engine-previous").returncode == 0
        if host == beside:
            made = hx(host, "docker create --name gpufleet-engine --label gpufleet.plan_hash=stale %s" % image)
            assert made.returncode == 0, made.stderr
    rc, output, recap = run(fleet, "site.yml", "--limit", "%s,%s" % (alone, beside))
    assert rc == 0, output[-4000:]
    for host in (alone, beside):
        assert recap[host]["failed"] == 0 and recap[host]["changed"] > 0, recap
        assert set(containers(host)) == {"gpufleet-engine"}, containers(host)
        assert engine(host)[0] == ids[host] and engine(host)[3]   # the one that kept serving, not a new one
        status, body = http(host, "/v1/models", KEY)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2"
    assert "port is already allocated" not in output


def test_a_host_lost_alone_in_its_batch_during_its_deployment_stops_the_rollout_with_the_report(fleet, first_run):
    """Batches of one host: the canary rolls out, then the next host stops answering SSH while its new engine is in
    its health gate. Its batch is lost whole, mid-deployment (Ansible would remove the host and end the playbook
    there): the host stays in the play, is found gone and recorded as lost, the rollout stops, the later hosts are
    left as they are, and the report, the Prometheus targets (every host still listed) and the run's failure
    follow. (Lost before its batch, at the pause: test_host_lost_mid_rollout_the_others_finish.)"""
    lost, later = "r-l40s-1", ["r-turing-1"]  # inventory order: the second batch, then the rest
    before = {h: containers(h) for h in HOSTS}
    targets_before = json.loads((fleet["work"] / "file_sd.json").read_text())
    cmd = [os.path.join(VENV_BIN, "ansible-playbook"), "site.yml", "-i", INVENTORY, "-e", "@" + fleet["secrets"],
           "-e", "rollout_prometheus_file_sd=%s" % (fleet["work"] / "file_sd.json"), "-e", "rollout_batch_size=1",
           "-e", "engine_served_model_name=tiny-qwen2-c"]
    # The canary's health gate is the first such task, the lost host's the second.
    rc, output, blocked = lab.run_losing_host_at_pause(
        cmd, PREFIX + lost, trigger="TASK [gpufleet.serving.engine : The engines are healthy and serve the model]",
        occurrence=2)
    assert blocked is not None and blocked.returncode == 0, output[-3000:]
    assert rc == 2, output[-4000:]                         # the outcome play ran: Ansible did not end the playbook
    assert re.search(r"fatal: \[localhost\]: FAILED! =>\s+(?:changed: false\s+)?msg: '?Rollout stopped after batch %s"
                     % lost, output), output[-3000:]
    rows = report_rows(output, "gpufleet.serving.engine : Report - every host")
    assert rows[CANARY].split()[-1] == "updated" and "healthy" in rows[CANARY], rows
    assert rows[lost].split()[-1] == "UNREACHABLE/FAILED", rows
    assert all(rows[h].split()[-1] == "NOT-ROLLED-OUT" for h in later), rows
    flat = " ".join(output.split())                         # as the YAML callback folds it
    assert ("Rollout stopped after batch %s: %s unreachable" % (lost, lost)) in flat
    assert "%s: lost during its deployment, what it runs now is unknown: " % lost in flat
    assert "Not rolled out, left as they are: %s." % ", ".join(later) in flat
    for host in later:
        assert containers(host) == before[host], "%s was touched" % host
    status, body = http(CANARY, "/v1/models", KEY)
    assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2-c"
    targets = json.loads((fleet["work"] / "file_sd.json").read_text())
    assert [g for g in targets if g["labels"]["host"] != CANARY] == \
        [g for g in targets_before if g["labels"]["host"] != CANARY]     # the lost and later hosts still monitored
    assert {g["labels"]["host"] for g in targets} == set(HOSTS)


def test_the_installed_collection_runs_rollout_alone_and_site_from_a_directory_of_its_own(fleet, first_run, tmp_path):
    """Issue 15: the tarball `ansible-galaxy collection build` makes, installed (offline: its dependencies are the
    ones the ansible package bundles) into an empty directory with the user's own ansible.cfg and inventory (the
    rollout fleet's, copied): `gpufleet.serving.rollout` alone reads the model snapshot and the GPUs from the host
    and rolls a change out; `gpufleet.serving.site` then converges the host back. Nothing of this checkout is on
    the path: not its ansible.cfg, not its collections/, not ~/.ansible."""
    host = "r-turing-1"
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in ansible_env().items() if not k.startswith("ANSIBLE_")}
    env.update(HOME=str(user), ANSIBLE_FORCE_COLOR="0")
    galaxy = os.path.join(VENV_BIN, "ansible-galaxy")
    built = subprocess.run([galaxy, "collection", "build", "--output-path", str(tmp_path), REPO_ROOT], cwd=str(user),
                           env=env, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    # What a user writes: where collections go, and readable output.
    (user / "ansible.cfg").write_text("[defaults]\ncollections_path = ./collections\ncallback_result_format = yaml\n")
    tarball = next(str(p) for p in tmp_path.iterdir() if p.name.endswith(".tar.gz"))
    installed = subprocess.run([galaxy, "collection", "install", "--offline", "-p", "./collections", tarball],
                               cwd=str(user), env=env, capture_output=True, text=True, check=False)
    assert installed.returncode == 0 and "gpufleet.serving:" in installed.stdout, installed.stdout + installed.stderr
    shutil.copytree(INVENTORY, user / "inventory")          # group_vars is a link into this checkout: copied
    playbook = os.path.join(VENV_BIN, "ansible-playbook")

    def run_user(name, *args):
        res = subprocess.run([playbook, name, "-v", "-i", "inventory", "-e", "@" + fleet["secrets"], *args],
                             cwd=str(user), env=env, capture_output=True, text=True, check=False)
        output = res.stdout + res.stderr
        assert "Using %s as config file" % (user / "ansible.cfg") in output, output[-3000:]
        return res.returncode, output

    # The only gpufleet.serving Ansible sees there is the installed one.
    listed = subprocess.run([galaxy, "collection", "list", "gpufleet.serving"], cwd=str(user), env=env,
                            capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and str(user / "collections" / "ansible_collections") in listed.stdout, listed.stdout
    assert REPO_ROOT not in listed.stdout and ".ansible/collections" not in listed.stdout, listed.stdout

    rc, output = run_user("gpufleet.serving.rollout", "--limit", host, "-e", "engine_served_model_name=tiny-qwen2-u")
    assert rc == 0, output[-4000:]
    assert "TASK [gpufleet.serving.engine : Read each snapshot's manifest" in output      # model_fetch did not run
    with open(user / "inventory" / "group_vars" / "gpu_hosts.yml") as f:
        commit = yaml.safe_load(f)["model_fetch_revision"]
    row = report_rows(output, "gpufleet.serving.engine : Report - every host")[host]
    assert row.split()[-1] == "updated" and "healthy" in row and commit[:12] in row, row   # the manifest's commit
    status, body = http(host, "/v1/models", KEY)
    assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2-u"
    # The default Prometheus file is relative to the user's directory.
    assert host in (user / ".cache" / "prometheus" / "gpufleet.json").read_text()

    rc, output = run_user("gpufleet.serving.site", "--limit", host)
    assert rc == 0, output[-4000:]
    assert "PLAY [Preflight" in output and "PLAY [Host stack" in output
    status, body = http(host, "/v1/models", KEY)
    assert status == 200 and json.loads(body)["data"][0]["id"] == "tiny-qwen2"


def test_a_daemon_json_change_restarts_docker_one_batch_at_a_time(fleet, first_run):
    """Issue 16: a daemon.json change on hosts whose engines run is written and applied (Docker restarted, which
    stops every engine of the host) in each host's rollout batch: the canary's Docker restarts first, and the
    next batch's only after the canary's engine, restarted with it, passed its health gate. The host stack
    writes and restarts nothing."""
    before = {h: engine(h) for h in HOSTS}
    # Hosts an earlier test left serving another name (the lost-host tests' canary and lost host): this run
    # replaces their engines too.
    renamed = {h for h in HOSTS if served_name(h) != "tiny-qwen2"}
    config = {"container_toolkit_daemon_config": {"log-driver": "json-file",
                                                  "log-opts": {"max-size": "50m", "max-file": "4"}}}
    rc, output, recap = run(fleet, "site.yml", *FAST, "-e", json.dumps(config))
    assert rc == 0, output[-4000:]
    host_stack = output.split("PLAY [Host stack", 1)[1].split("\nPLAY [", 1)[0]
    assert "changed: [" not in host_stack.split("TASK [gpufleet.serving.container_toolkit : Docker is enabled", 1)[1] \
        .split("TASK [gpufleet.serving.container_toolkit : CDI spec", 1)[0], host_stack[-3000:]
    restart = "gpufleet.serving.engine : Restart Docker - the engines stop and start again with it (restart policy)"
    batches = rollout_batches(output)
    assert batches == [[CANARY], sorted(OTHERS)], batches
    for batch, section in zip(batches, output.split("PLAY [Roll the engine out")[1:]):
        task = section.split("TASK [%s]" % restart, 1)[1].split("TASK [", 1)[0]
        restarted = re.findall(r"^changed: \[([^\]\s]+)\]", task, re.M)
        assert sorted(restarted) == batch, (batch, restarted)
    for host in HOSTS:
        config_now = json.loads(hx(host, "cat /etc/docker/daemon.json").stdout)
        assert config_now["log-opts"]["max-file"] == "4", config_now
        now = engine(host)
        assert instant(now[1]) > instant(before[host][1]) and now[3]
        # The same engine, restarted with Docker, unless it served another name.
        assert host in renamed or now[0] == before[host][0], (host, renamed)
    # The canary's engine answered its health gate's completion before any other host's Docker restarted.
    healthy = hx(CANARY, "docker logs --timestamps --since %s gpufleet-engine 2>&1 | grep -m1 'POST /v1/chat/completions'"
                 % engine(CANARY)[1]).stdout.split()
    assert healthy, "no health-gate completion on the canary since its restart"
    started = {h: engine(h)[1] for h in OTHERS}
    assert all(instant(t) > instant(healthy[0]) for t in started.values()), (healthy[0], started)


def test_a_daemon_json_docker_refuses_is_put_back_and_the_canary_serves_again(fleet, first_run):
    """Issue 16: a daemon.json key Docker refuses fails the canary's Docker restart in its batch. The canary gets
    its previous daemon.json back, Docker starts with it, the same engine comes back healthy (restart policy), and
    the rollout stops: no other host's file is written or its Docker restarted. The run is limited to the canary
    and one host of the next batch (the rest is the same path on more hosts). Last in the module: the fleet goes
    down after it."""
    later = "r-turing-1"
    before = {h: engine(h) for h in HOSTS}
    daemon_json = {h: hx(h, "cat /etc/docker/daemon.json").stdout for h in HOSTS}
    config = {"container_toolkit_daemon_config": {"gpufleet-no-such-option": True}}
    rc, output, recap = run(fleet, "site.yml", *FAST, "-e", json.dumps(config), "--limit", "%s,%s" % (CANARY, later))
    assert rc == 2 and recap[CANARY]["failed"] == 1, output[-4000:]
    flat = " ".join(output.replace("''", "'").split())             # as the YAML callback folds and quotes it
    assert "Not rolled out, left as they are: %s." % later in flat, output[-3000:]
    assert "the following directives don't match any configuration option: gpufleet-no-such-option" in flat
    assert "Docker's previous configuration (daemon.json) put back and Docker restarted, now healthy" in flat
    assert {h: hx(h, "cat /etc/docker/daemon.json").stdout for h in HOSTS} == daemon_json
    assert hx(CANARY, "systemctl is-active docker").stdout.strip() == "active"
    now = engine(CANARY)
    assert now[0] == before[CANARY][0] and now[3], now              # the same container, running again
    assert instant(now[1]) > instant(before[CANARY][1])             # stopped by the failed restart, started again
    status, body = http(CANARY, "/v1/models", KEY)
    assert status == 200 and "tiny-qwen2" in body
    assert_untouched(before)


def served_name(host):
    """The gpufleet.served_model_name label of the host's engine."""
    return hx(host, "docker inspect -f '{{index .Config.Labels \"gpufleet.served_model_name\"}}' gpufleet-engine").stdout.strip()


def instant(stamp):
    """Seconds of Docker's RFC 3339 timestamps ('2026-12-04T04:22:37.98667057Z': the fraction's trailing zeros cut)."""
    whole, _unused, fraction = stamp.rstrip("Z").partition(".")
    return datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").timestamp() + float("0." + (fraction or "0"))
