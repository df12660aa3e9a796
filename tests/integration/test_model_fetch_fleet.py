"""model_fetch's fleet mode and offline adoption on a lab fleet of its own (tests/integration/fleets/
fetch1.yml: three hosts, their own network and HF server, beside the built-in lab).

The HF server's access log is the upstream traffic: every `GET .../resolve/...` is a download."""
import collections
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from lab import RECAP_LINE, REPO_ROOT, VENV_BIN, ansible_env

from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot

pytestmark = pytest.mark.lab

FLEET_FILE = os.path.join(REPO_ROOT, "tests", "integration", "fleets", "fetch1.yml")
LABCTL = os.path.join(REPO_ROOT, "lab", "labctl.py")
HOST_IMAGE = "gpufleet/lab-host:bookworm"
MAIN, DRAFT, GATED = "gpufleet/tiny-qwen2", "gpufleet/tiny-qwen2-draft", "gpufleet/tiny-qwen2-gated"
# Each commit in a dir of its own under the model's home (docs/model_fetch.md); the lab inventory pins v1.0.
MAIN_HOME, DRAFT_HOME = "/srv/models/gpufleet--tiny-qwen2", "/srv/models/gpufleet--tiny-qwen2-draft"
V1, MAIN_SHA = "0bd5fd24e3dc83924a8c235f3824371e3a6896e9", "38f9117fe9090e70c2089b9fa8c25e5f960fb1fd"
MAIN_DIR = f"{MAIN_HOME}/snapshots/{V1}"
MANIFEST = ".gpufleet-snapshot.json"

PLAYBOOK = """
- name: Model snapshots
  hosts: gpu_hosts
  gather_facts: false
  roles:
    - gpufleet.serving.model_fetch
  post_tasks:
    - name: Keep the published fact for the test
      ansible.builtin.copy:
        content: "{{ gpufleet_model | to_json }}"
        dest: "{{ test_facts_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      delegate_to: localhost
      changed_when: false  # the test's own bookkeeping, not counted in the recap
"""


def missing_prerequisite():
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
        return "no Docker engine"
    if shutil.which("rsync") is None:
        return "no rsync on the controller"
    if subprocess.run(["docker", "image", "inspect", HOST_IMAGE], capture_output=True, check=False).returncode:
        return f"the lab images are not built (run `.venv/bin/python {os.path.relpath(LABCTL, REPO_ROOT)} up`)"
    return None


class Fleet:
    """The fetch1 fleet: run the role on it, look inside its hosts, read its HF server's access log."""

    def __init__(self, workdir):
        with open(FLEET_FILE) as f:
            spec = yaml.safe_load(f)
        self.name, self.hosts = spec["name"], sorted(spec["hosts"])
        self.ips = {host: h["ip"] for host, h in spec["hosts"].items()}
        self.gateway = spec["network"]["gateway"]
        self.state = os.path.join(REPO_ROOT, ".cache", "lab", "fleets", self.name)
        self.access_log = os.path.join(self.state, "hf", "access.log")
        self.seed_root = os.path.join(self.state, "seed")  # the controller's source snapshots
        self.workdir = workdir
        self.facts_dir = os.path.join(workdir, "facts")
        os.makedirs(self.facts_dir, exist_ok=True)
        self.playbook = os.path.join(workdir, "model_fetch.yml")
        with open(self.playbook, "w") as f:
            f.write(PLAYBOOK)
        self.runs = 0

    @property
    def token(self):
        with open(os.path.join(self.state, "hf", "gated-token")) as f:
            return f.read().strip()

    def run(self, *args, **extra_vars):
        """The role in fleet mode (unless overridden) with the draft model; variables go in a file (a token
        on the command line would be in the process list). Returns (rc, output, recap)."""
        self.runs += 1
        variables = dict({"model_fetch_mode": "fleet", "model_fetch_controller_root": self.seed_root,
                          "model_fetch_extra_models": [{"repo_id": DRAFT, "name": "draft"}],
                          "test_facts_dir": self.facts_dir}, **extra_vars)
        vars_file = os.path.join(self.workdir, f"vars-{self.runs}.json")
        fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(variables, f)
        cmd = [os.path.join(VENV_BIN, "ansible-playbook"), self.playbook,
               "-i", os.path.join(self.state, "inventory"), "-e", "@" + vars_file, *args]
        res = subprocess.run(cmd, cwd=REPO_ROOT, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
        output = res.stdout + res.stderr
        recap = {m.group(1): {"changed": int(m.group(3)), "failed": int(m.group(5))}
                 for m in RECAP_LINE.finditer(output)}
        return res.returncode, output, recap

    def sh(self, host, script, check=True):
        res = subprocess.run(["docker", "exec", f"gpufleet-{self.name}-{host}", "bash", "-c", script],
                             capture_output=True, text=True, check=False)
        if check:
            assert res.returncode == 0, res.stderr
        return res

    def manifest(self, host, path):
        res = self.sh(host, f"cat {path}/{MANIFEST}", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def sha256s(self, host, path):
        """{file: sha256} of the files on disk, for comparison with the manifest."""
        out = self.sh(host, f"cd {path} && find . -type f ! -name {MANIFEST} -printf '%P\\0' | xargs -0 sha256sum").stdout
        return {name: digest for digest, name in (line.split("  ", 1) for line in out.splitlines())}

    def fact(self, host):
        with open(os.path.join(self.facts_dir, f"{host}.json")) as f:
            return json.load(f)

    def inode(self, host, path):
        return self.sh(host, f"stat -c %i {path}").stdout.strip()

    def log_mark(self):
        return os.path.getsize(self.access_log)

    def requests(self, since):
        with open(self.access_log) as f:
            f.seek(since)
            return [dict(zip(("time", "client", "method", "path", "status", "bytes"), line.split(" ")))
                    for line in f.read().splitlines()]

    def downloads(self, since):
        """{(repo_id, file): GETs with a body} of /resolve/ requests: what came from upstream."""
        counts = collections.Counter()
        for req in self.requests(since):
            parts = req["path"].split("?")[0].split("/")
            if req["method"] == "GET" and len(parts) > 5 and parts[3] == "resolve" and req["status"] in ("200", "206"):
                counts["/".join(parts[1:3]), "/".join(parts[5:])] += 1
        return dict(counts)

    def reset(self, hosts=None):
        for host in hosts or self.hosts:
            self.sh(host, "rm -rf /srv/models /srv/preseed")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    problem = missing_prerequisite()
    if problem:
        if os.environ.get("GPUFLEET_REQUIRE_LAB"):
            pytest.fail(f"cannot bring up the fetch1 lab fleet: {problem}")
        pytest.skip(f"cannot bring up the fetch1 lab fleet: {problem}")
    up = subprocess.run([sys.executable, LABCTL, "up", "--fleet", FLEET_FILE], cwd=REPO_ROOT,
                        capture_output=True, text=True, check=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        fleet = Fleet(str(tmp_path_factory.mktemp("fetch1")))
        shutil.rmtree(fleet.seed_root, ignore_errors=True)
        fleet.reset()
        yield fleet
    finally:
        subprocess.run([sys.executable, LABCTL, "down", "--fleet", FLEET_FILE], cwd=REPO_ROOT, capture_output=True, check=False)


@pytest.fixture(scope="module")
def first_run(fleet):
    mark = fleet.log_mark()
    rc, output, recap = fleet.run()
    return {"rc": rc, "output": output, "recap": recap, "downloads": fleet.downloads(mark),
            "clients": {r["client"] for r in fleet.requests(mark)}}


def test_fleet_mode_downloads_each_file_once_for_the_whole_fleet(fleet, first_run):
    recap, downloads = first_run["recap"], first_run["downloads"]
    assert first_run["rc"] == 0, first_run["output"][-5000:]
    assert set(recap) == set(fleet.hosts) and all(r["changed"] > 0 for r in recap.values()), recap
    assert downloads and set(downloads.values()) == {1}, downloads
    commits = set()
    for host in fleet.hosts:
        manifest = fleet.manifest(host, MAIN_DIR)
        assert manifest["host"] == host, "not verified and recorded by the host itself"
        assert {(MAIN, name) for name in manifest["files"]} <= set(downloads)
        assert fleet.sha256s(host, MAIN_DIR) == {n: r["sha256"] for n, r in manifest["files"].items()}
        commits.add(manifest["commit_sha"])
        assert fleet.fact(host)["commit_sha"] == manifest["commit_sha"] == V1
        assert fleet.fact(host)["dir"] == MAIN_DIR  # the commit's own dir: what the engine mounts
        assert not fleet.sh(host, f"test -e {MAIN_DIR}/.gpufleet-incoming", check=False).returncode == 0
    assert len(commits) == 1
    assert first_run["clients"].isdisjoint(fleet.ips.values()), "only the controller talks to the HF server"


def test_the_draft_model_arrives_through_the_same_path(fleet, first_run):
    downloads = first_run["downloads"]
    assert {name for repo, name in downloads if repo == DRAFT} >= {"config.json", "model.safetensors"}
    for host in fleet.hosts:
        (draft,) = fleet.fact(host)["extra_models"]
        manifest = fleet.manifest(host, draft["dir"])
        assert draft["dir"] == f"{DRAFT_HOME}/snapshots/{manifest['commit_sha']}"
        assert manifest["repo_id"] == DRAFT and manifest["host"] == host
        assert fleet.sha256s(host, draft["dir"]) == {n: r["sha256"] for n, r in manifest["files"].items()}
        # weights_bytes: what the engine loads (its one safetensors file), what the planner sizes the draft by
        assert draft == {"name": "draft", "repo_id": DRAFT, "dir": draft["dir"],
                         "commit_sha": manifest["commit_sha"], "bytes": manifest["bytes"],
                         "weights_bytes": manifest["files"]["model.safetensors"]["size"]}


def test_second_run_changes_nothing_and_downloads_nothing(fleet, first_run):
    mark = fleet.log_mark()
    rc, output, recap = fleet.run()
    assert rc == 0, output[-5000:]
    assert {h: r["changed"] for h, r in recap.items()} == {h: 0 for h in fleet.hosts}, output[-5000:]
    assert fleet.downloads(mark) == {}


def test_a_new_commit_goes_beside_the_old_one_and_only_changed_files_travel(fleet, first_run):
    """A new revision lands in a dir of its own on every host: the old commit's dir (what a running engine mounts)
    is not touched, the files both commits share are hard-linked from it, and only the changed ones are
    downloaded once and sent. Back on v1.0 (the next tests), the hosts have nothing to do."""
    old = {h: (fleet.manifest(h, MAIN_DIR), fleet.sha256s(h, MAIN_DIR), fleet.inode(h, f"{MAIN_DIR}/config.json"))
           for h in fleet.hosts}
    mark = fleet.log_mark()
    rc, output, recap = fleet.run(model_fetch_revision=MAIN_SHA)
    assert rc == 0, output[-5000:]
    assert fleet.downloads(mark) == {(MAIN, "README.md"): 1, (MAIN, "generation_config.json"): 1}
    new_dir = f"{MAIN_HOME}/snapshots/{MAIN_SHA}"
    for host in fleet.hosts:
        assert fleet.fact(host)["dir"] == new_dir and fleet.manifest(host, new_dir)["host"] == host
        assert (fleet.manifest(host, MAIN_DIR), fleet.sha256s(host, MAIN_DIR),
                fleet.inode(host, f"{MAIN_DIR}/config.json")) == old[host], f"{host}: the old commit's dir changed"
        assert fleet.inode(host, f"{new_dir}/model.safetensors") == fleet.inode(host, f"{MAIN_DIR}/model.safetensors")
        assert fleet.inode(host, f"{new_dir}/generation_config.json") != fleet.inode(
            host, f"{MAIN_DIR}/generation_config.json")
    mark = fleet.log_mark()
    rc, output, recap = fleet.run()
    assert rc == 0, output[-5000:]
    # The controller's cache (one dir per repo) goes back to v1.0's file; the hosts still hold v1.0: nothing to do.
    assert fleet.downloads(mark) == {(MAIN, "generation_config.json"): 1}
    assert all(recap[h]["changed"] == 0 for h in fleet.hosts[1:]), recap  # the seed's task counts on the first


def flip_byte(fleet, host, path, offset=1000):
    fleet.sh(host, f"printf '\\x5a' | dd of={path} bs=1 seek={offset} conv=notrunc status=none")


def rot_a_bit(fleet, host, snapshot_dir, name):
    """Bit rot: one byte changes and the file's stat does not (the disk did it, not a writer). Simulated
    by flipping the byte and re-recording the stat in the manifest, as if the stat had never moved."""
    flip_byte(fleet, host, f"{snapshot_dir}/{name}")
    fleet.sh(host, "python3 -c 'import json, os, sys\n"
                   "m = sys.argv[1]; d = json.load(open(m)); st = os.stat(sys.argv[2])\n"
                   "d[\"stat\"][sys.argv[3]] = {\"size\": st.st_size, \"mtime_ns\": st.st_mtime_ns,"
                   " \"ctime_ns\": st.st_ctime_ns, \"ino\": st.st_ino}\n"
                   "json.dump(d, open(m, \"w\"))'"
                   f" {snapshot_dir}/{MANIFEST} {snapshot_dir}/{name} {name}")


def test_a_corrupted_copy_is_found_and_resent_from_the_seed(fleet, first_run):
    b, c = fleet.hosts[1], fleet.hosts[2]
    good = fleet.sha256s(b, MAIN_DIR)["model.safetensors"]
    rot_a_bit(fleet, b, MAIN_DIR, "model.safetensors")  # same size, same stat: only a re-hash can tell
    flip_byte(fleet, c, f"{MAIN_DIR}/model.safetensors")  # same size, but a writer moved its stat
    fleet.sh(c, f"truncate -s 10 {MAIN_DIR}/config.json")
    mark = fleet.log_mark()

    rc, output, recap = fleet.run()
    # Stats are checked on every run: c's rewrite is found without verify; b's rot is not.
    assert rc == 0, output[-5000:]
    assert recap[c]["changed"] > 0 and recap[b]["changed"] == 0, recap
    assert fleet.sha256s(c, MAIN_DIR) == {n: r["sha256"] for n, r in fleet.manifest(c, MAIN_DIR)["files"].items()}
    assert fleet.sha256s(c, MAIN_DIR)["model.safetensors"] == good
    assert fleet.sha256s(b, MAIN_DIR)["model.safetensors"] != good

    rc, output, recap = fleet.run(model_fetch_verify=True)
    assert rc == 0, output[-5000:]
    assert recap[b]["changed"] > 0 and recap[c]["changed"] == 0, recap
    assert fleet.sha256s(b, MAIN_DIR)["model.safetensors"] == good
    assert fleet.downloads(mark) == {}, "repaired from the seed, not from upstream"


def test_a_wrong_delivery_is_never_recorded(fleet, first_run):
    """The seed's copy goes bad on disk (same size): a host receiving it refuses it, is left without a
    manifest, and the next run with verify repairs the seed (one download) and then the host."""
    a = fleet.hosts[0]
    seed_weights = os.path.join(fleet.seed_root, "gpufleet--tiny-qwen2", "model.safetensors")
    with open(seed_weights, "r+b") as f:
        f.seek(1000)
        f.write(bytes([f.read(1)[0] ^ 0xFF]))
    # Bit rot that the file's stat does not show (the seed would notice a changed stat and repair itself).
    hf_snapshot.record_stat(os.path.dirname(seed_weights))
    fleet.reset([a])
    rc, output, recap = fleet.run("--limit", a)
    assert rc != 0 and recap[a]["failed"] == 1
    assert "model.safetensors" in output and "delivered but not matching the manifest" in output, output[-3000:]
    assert fleet.manifest(a, MAIN_DIR) is None
    assert fleet.sh(a, f"test -e {MAIN_DIR}/model.safetensors", check=False).returncode != 0

    mark = fleet.log_mark()
    rc, output, recap = fleet.run("--limit", a, model_fetch_verify=True)
    assert rc == 0, output[-5000:]
    assert fleet.downloads(mark) == {(MAIN, "model.safetensors"): 1}
    assert fleet.manifest(a, MAIN_DIR)["host"] == a


def test_a_preseeded_dir_is_adopted_offline_and_a_wrong_file_fails(fleet, first_run):
    a, c = fleet.hosts[0], fleet.hosts[2]
    offline = {"model_fetch_mode": "per_host", "model_fetch_offline": True, "model_fetch_extra_models": [],
               "model_fetch_hf_endpoint": f"http://{fleet.gateway}:9"}  # closed: any contact would fail
    # Carried in from another host, with the manifest it was fetched with.
    fleet.sh(c, "mkdir -p /srv/preseed/good /srv/preseed/bad")
    for target in ("good", "bad"):
        subprocess.run(f"docker exec gpufleet-{fleet.name}-{a} tar -C {MAIN_DIR} -cf - . | "
                       f"docker exec -i gpufleet-{fleet.name}-{c} tar -C /srv/preseed/{target} -xf -",
                       shell=True, check=True)
    flip_byte(fleet, c, "/srv/preseed/bad/tokenizer.json", offset=10)
    mark = fleet.log_mark()

    rc, output, recap = fleet.run("--limit", c, model_fetch_dir="/srv/preseed/good", **offline)
    assert rc == 0, output[-5000:]
    assert recap[c]["changed"] > 0
    assert fleet.manifest(c, f"/srv/preseed/good/snapshots/{V1}")["host"] == c  # linked into the commit's dir
    rc, output, recap = fleet.run("--limit", c, model_fetch_dir="/srv/preseed/good", **offline)
    assert rc == 0 and recap[c]["changed"] == 0, output[-5000:]

    rc, output, recap = fleet.run("--limit", c, model_fetch_dir="/srv/preseed/bad", **offline)
    assert rc != 0
    assert "tokenizer.json" in output and "not matching the manifest" in output, output[-3000:]
    assert fleet.manifest(c, "/srv/preseed/bad") is None  # the carried-in manifest no longer vouches for it
    assert fleet.manifest(c, f"/srv/preseed/bad/snapshots/{V1}") is None
    assert fleet.requests(mark) == [], "offline mode contacted the HF server"


def test_fleet_mode_offline_shares_the_seeds_carried_in_copy(fleet, first_run):
    """Air-gapped site: the controller's copy (carried in) is verified there and shared; no endpoint."""
    b = fleet.hosts[1]
    fleet.reset([b])
    mark = fleet.log_mark()
    draft_sha = fleet.fact(fleet.hosts[0])["extra_models"][0]["commit_sha"]  # offline: pinned to a sha
    rc, output, recap = fleet.run(model_fetch_offline=True, model_fetch_hf_endpoint=f"http://{fleet.gateway}:9",
                                  model_fetch_extra_models=[{"repo_id": DRAFT, "name": "draft", "revision": draft_sha}])
    assert rc == 0, output[-5000:]
    assert recap[b]["changed"] > 0 and all(recap[h]["changed"] == 0 for h in fleet.hosts if h != b), recap
    assert fleet.manifest(b, MAIN_DIR)["host"] == b
    assert fleet.manifest(b, f"{DRAFT_HOME}/snapshots/{draft_sha}")["host"] == b
    assert fleet.requests(mark) == []


def test_a_seed_host_downloads_once_and_pushes_to_the_others(fleet, first_run):
    a = fleet.hosts[0]
    # A fleet-internal key on the seed that logs into the other hosts (the lab's key, here).
    subprocess.run(["docker", "cp", os.path.join(REPO_ROOT, ".cache", "lab", "ssh", "id_ed25519"),
                    f"gpufleet-{fleet.name}-{a}:/root/.ssh/fleet_key"], check=True)
    fleet.sh(a, "chmod 600 /root/.ssh/fleet_key")
    fleet.reset()
    mark = fleet.log_mark()
    rc, output, recap = fleet.run(model_fetch_seed_host=a, model_fetch_seed_ssh_key="/root/.ssh/fleet_key")
    assert rc == 0, output[-5000:]
    downloads = fleet.downloads(mark)
    assert downloads and set(downloads.values()) == {1}, downloads
    assert {r["client"] for r in fleet.requests(mark)} == {fleet.ips[a]}
    for host in fleet.hosts:
        manifest = fleet.manifest(host, MAIN_DIR)
        assert manifest["host"] == host
        assert fleet.sha256s(host, MAIN_DIR) == {n: r["sha256"] for n, r in manifest["files"].items()}


def test_verbose_fleet_run_with_a_token_never_shows_it(fleet, first_run):
    token = fleet.token
    mark = fleet.log_mark()
    rc, output, recap = fleet.run("-vvvv", model_fetch_repo_id=GATED, model_fetch_revision="main",
                                  model_fetch_hf_token=token, model_fetch_extra_models=[])
    assert rc == 0, output[-5000:]
    assert token not in output
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in output  # it was passed, and masked
    assert {name for repo, name in fleet.downloads(mark) if repo == GATED} >= {"model.safetensors"}
    for host in fleet.hosts:
        assert fleet.fact(host)["dir"].startswith("/srv/models/gpufleet--tiny-qwen2-gated/snapshots/")
        assert fleet.manifest(host, fleet.fact(host)["dir"])["repo_id"] == GATED
        assert fleet.sh(host, f"grep -rqF {token} /srv/models /root /tmp", check=False).returncode == 1
