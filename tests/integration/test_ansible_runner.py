"""site.yml driven by ansible-runner's Python API, the way AWX/AAP runs a job, on the runner fleet
(tests/integration/fleets/runner.yml: one host on its own network beside the built-in lab, brought
up and down here: what runner adds does not depend on the number of hosts, and each costs a bare converge). See docs/ansible_runner.md.

The private data dir is laid out as AWX lays it out: project/ (this checkout, so its ansible.cfg and
collections/ apply), inventory/, env/extravars (job extra vars and credential injections: the engine
API key), env/settings, env/envvars, env/cmdline; a vault password is answered through runner's
`passwords` (prompt -> response), as AWX answers a vault credential's prompt.

Proven: two runs, both 'successful' with rc 0; every host ok and none failed or unreachable, read from
runner's events (playbook_on_stats, runner_on_ok); every engine healthy after the first run; changed=0
and no engine restarted on the second; gpufleet.serving resolved from the checkout's collections/
(no Galaxy, no collection installed anywhere else); the API key, the Hugging Face token and the vault
password, all of them used by the run, in none of runner's artifacts (stdout, events, command, facts).

The tests run in file order and share the fleet and the private data dir.
"""
import json
import os
import secrets
import subprocess
import time

import ansible_runner
import pytest
from ansible.parsing.vault import VaultLib, VaultSecret
import lab
from lab import REPO_ROOT, VENV_BIN

pytestmark = pytest.mark.lab

FLEET_FILE = os.path.join(REPO_ROOT, "tests", "integration", "fleets", "runner.yml")
FLEET_STATE = os.path.join(REPO_ROOT, ".cache", "lab", "fleets", "runner")
PREFIX = "gpufleet-runner-"
HOSTS = ["x-hopper-1"]
COLLECTION_ROOT = os.path.join(os.path.realpath(REPO_ROOT), "collections", "ansible_collections", "gpufleet",
                               "serving")
KEY = "gpufleet-runner-key-" + secrets.token_hex(12)
VAULT_ID = "gpufleet"
VAULT_PASSWORD = "gpufleet-vault-" + secrets.token_hex(12)
GATED = "gpufleet/tiny-qwen2-gated"   # the lab's gated repo: fetched only with the right token
GATED_DIR = "/srv/models/gpufleet--tiny-qwen2-gated"


def labctl(command):
    return lab.labctl(FLEET_FILE, command)


def hx(host, script):
    return subprocess.run(["docker", "exec", PREFIX + host, "bash", "-c", script], capture_output=True, text=True, check=False)


def write_private(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)


@pytest.fixture(scope="module")
def fleet():
    """The runner fleet, up for this module and down after it; one left by an interrupted session is
    removed first. A missing prerequisite skips, or fails under GPUFLEET_REQUIRE_LAB."""
    lab.fresh_fleet(FLEET_FILE, "runner")
    try:
        # Written by labctl when it starts this fleet's HF server. Missing when another checkout's
        # runner fleet (same container names, network and gateway address) already serves the port.
        with open(os.path.join(FLEET_STATE, "hf", "gated-token")) as f:
            hf_token = f.read().strip()
    except OSError as exc:
        labctl("down")
        pytest.fail("the runner fleet's HF server state is missing (%s): is a runner fleet of another "
                    "checkout up?" % exc)
    yield {"hf_token": hf_token}
    down = labctl("down")
    assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def pdd(fleet, tmp_path_factory):
    """An AWX-shaped private data dir. HOME is a fresh directory, so no ~/.ansible/collections (or
    anything else of this machine's user) can supply the collection: only the project's ansible.cfg."""
    root = tmp_path_factory.mktemp("runner")
    (root / "project").symlink_to(REPO_ROOT)  # AWX: the project's SCM checkout, synced for the job
    inventory = root / "inventory"             # AWX: the job's inventory (here: the one labctl wrote)
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(open(os.path.join(FLEET_STATE, "inventory", "hosts.yml")).read())
    (inventory / "group_vars").symlink_to(os.path.join(REPO_ROOT, "inventories", "lab", "group_vars"))
    env = root / "env"
    env.mkdir()
    home = root / "home"
    home.mkdir()
    # Job extra vars + a credential's injected extra vars. rollout_prometheus_file_sd: the default is
    # relative to the working directory, which is the project (this checkout) under runner.
    write_private(str(env / "extravars"), json.dumps({
        "engine_api_key": KEY,
        # Extra vars replace the lab's list: keep its draft (the lab's L40S group names it; what other fleets run).
        "model_fetch_extra_models": [{"repo_id": GATED, "name": "gated"},
                                     {"repo_id": "gpufleet/tiny-qwen2-draft", "name": "draft"}],
        "rollout_prometheus_file_sd": str(root / "file_sd.json"),
    }))
    write_private(str(env / "settings"), json.dumps({"suppress_ansible_output": True, "job_timeout": 900}))
    write_private(str(env / "envvars"), json.dumps({
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),  # the EE's ansible-playbook
        "HOME": str(home), "ANSIBLE_NOCOLOR": "1"}))
    # The Hugging Face token as a vaulted file (as a project keeps it), opened with a vault password that
    # only runner's `passwords` answer to ansible-playbook's prompt knows.
    vault = VaultLib([(VAULT_ID, VaultSecret(VAULT_PASSWORD.encode()))])
    vaulted = vault.encrypt(json.dumps({"model_fetch_hf_token": fleet["hf_token"]}), vault_id=VAULT_ID)
    write_private(str(root / "vault.yml"), vaulted.decode())
    write_private(str(env / "cmdline"), "-e @%s --vault-id %s@prompt" % (root / "vault.yml", VAULT_ID))
    return root


def run(pdd, ident, **kwargs):
    started = time.monotonic()
    # suppress_env_files, as AWX sets it: otherwise runner writes keyword arguments it has no env/ file
    # for (here: the passwords) into the private data dir.
    result = ansible_runner.run(private_data_dir=str(pdd), playbook="site.yml", ident=ident, suppress_env_files=True,
                                passwords={r"Vault password \(%s\):\s*?$" % VAULT_ID: VAULT_PASSWORD}, **kwargs)
    events = list(result.events)
    return {"result": result, "events": events, "stdout": result.stdout.read(), "wall": time.monotonic() - started,
            "artifacts": os.path.join(str(pdd), "artifacts", ident)}


def stats_of(run_):
    stats = [e["event_data"] for e in run_["events"] if e["event"] == "playbook_on_stats"]
    assert len(stats) == 1, [e["event"] for e in run_["events"]][-20:]
    return stats[0]


def assert_every_host_ok(run_):
    result, stdout = run_["result"], run_["stdout"]
    assert (result.status, result.rc) == ("successful", 0), stdout[-5000:]
    stats = stats_of(run_)
    assert stats["failures"] == {} and stats["dark"] == {}, stats
    assert set(HOSTS) <= set(stats["processed"]) and all(stats["ok"].get(h, 0) > 0 for h in HOSTS), stats
    assert result.stats == {k: stats[k] for k in result.stats}     # runner's summary is these events
    bad = [e["event_data"].get("host") for e in run_["events"]
           if e["event"] in ("runner_on_failed", "runner_on_unreachable", "runner_item_on_failed")
           and not e["event_data"].get("ignore_errors")]
    assert bad == [], bad
    ok_hosts = {e["event_data"]["host"] for e in run_["events"] if e["event"] == "runner_on_ok"}
    assert set(HOSTS) <= ok_hosts
    return stats


def summary_rows(run_):
    """{host: row} of the Fleet summary task, read from its runner_on_ok event."""
    event = next(e for e in run_["events"]
                 if e["event"] == "runner_on_ok" and e["event_data"]["task"] == "Fleet summary")
    return {line.split()[0]: line for line in event["event_data"]["res"]["msg"] if line.split()[0] in HOSTS}


def engine_started_at(host):
    return hx(host, "docker inspect -f '{{.State.StartedAt}}' gpufleet-engine").stdout.strip()


def files_with(root, text):
    """Every regular file under root (recursively, links not followed) whose bytes contain text."""
    found = []
    for dirpath, _unused, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):   # SSH control sockets, the project link
                continue
            with open(path, "rb") as f:
                if text.encode() in f.read():
                    found.append(path)
    return found


@pytest.fixture(scope="module")
def first_run(pdd):
    """site.yml on the bare fleet at -vvvv, so the secret checks see everything Ansible can print."""
    return run(pdd, "first", verbosity=4)


@pytest.fixture(scope="module")
def second_run(pdd, first_run):
    before = {h: engine_started_at(h) for h in HOSTS}
    return dict(run(pdd, "second"), engines_before=before)


def test_first_run_converges_every_host_healthy(first_run):
    stats = assert_every_host_ok(first_run)
    assert all(stats["changed"].get(h, 0) > 0 for h in HOSTS), stats   # bare hosts: the run did the work
    rows = summary_rows(first_run)
    assert sorted(rows) == HOSTS and all(" healthy " in row for row in rows.values()), rows
    # The health gate itself ran on every host (gpufleet.serving.engine_health, from its events).
    gated = {e["event_data"]["host"] for e in first_run["events"] if e["event"] == "runner_on_ok"
             and e["event_data"].get("resolved_action") == "gpufleet.serving.engine_health"}
    assert gated == set(HOSTS)


def test_runner_ran_the_project_with_its_ansible_cfg(pdd, first_run):
    with open(os.path.join(first_run["artifacts"], "command")) as f:
        command = json.load(f)
    assert command["cwd"] == str(pdd / "project")
    argv = command["command"]
    pairs = set(zip(argv, argv[1:]))
    assert argv[0] == "ansible-playbook" and argv[-1] == "site.yml", argv
    assert {("-i", str(pdd / "inventory")), ("-e", "@%s" % (pdd / "env" / "extravars")),
            ("--vault-id", VAULT_ID + "@prompt")} <= pairs, argv
    assert "Using %s as config file" % os.path.join(os.path.realpath(REPO_ROOT), "ansible.cfg") in first_run["stdout"]


def test_collection_resolves_from_the_checkout(pdd, first_run):
    events = [e["event_data"] for e in first_run["events"] if e["event"] == "runner_on_ok"]
    ours = [e for e in events if (e.get("resolved_role") or "").startswith("gpufleet.serving.")]
    roles = {e["resolved_role"] for e in ours}
    assert {"gpufleet.serving.preflight", "gpufleet.serving.model_fetch", "gpufleet.serving.engine"} <= roles, roles
    # Role tasks come from the collection the project's ansible.cfg points at; only the argument spec
    # checks Ansible adds to a role carry the path of the play (in the project) that includes the role.
    outside = [e["task_path"] for e in ours if not e["task_path"].startswith(COLLECTION_ROOT + "/roles/")
               and not (e["resolved_action"] == "ansible.builtin.validate_argument_spec"
                        and e["task_path"].startswith(os.path.realpath(REPO_ROOT) + "/"))]
    assert outside == [], outside[:5]
    modules = {e["resolved_action"] for e in events if e.get("resolved_action", "").startswith("gpufleet.serving.")}
    assert {"gpufleet.serving.hf_model", "gpufleet.serving.engine_health"} <= modules, modules
    # Nothing was installed for the job: no collection under the job's HOME, no Galaxy call in the log.
    assert not (pdd / "home" / ".ansible" / "collections").exists()
    assert "ansible-galaxy" not in first_run["stdout"] and "galaxy.ansible.com" not in first_run["stdout"]


def test_secrets_were_used(fleet, first_run):
    """The key and the vaulted token reached the hosts: otherwise their absence below proves nothing."""
    for host in HOSTS:
        models = "curl -s -o /dev/null -w '%%{http_code}' %s http://127.0.0.1:30000/v1/models"
        assert hx(host, models % "").stdout == "401"
        assert hx(host, models % ("-H 'Authorization: Bearer %s'" % KEY)).stdout == "200"
        # The gated snapshot is there, and only a valid token opens the lab's gated repo.
        manifest = hx(host, "cat %s/snapshots/*/.gpufleet-snapshot.json" % GATED_DIR)  # the commit's own dir
        assert manifest.returncode == 0 and json.loads(manifest.stdout)["repo_id"] == GATED, manifest.stderr


def test_secrets_are_in_no_artifact(pdd, fleet, first_run, second_run):
    artifacts = str(pdd / "artifacts")
    assert sorted(os.listdir(artifacts)) == ["first", "second"]
    # The search works: it finds the key in the file it was given in, and the model in the events.
    assert files_with(str(pdd / "env"), KEY) == [str(pdd / "env" / "extravars")]
    assert files_with(os.path.join(artifacts, "first", "job_events"), "tiny-qwen2")
    assert os.path.exists(os.path.join(artifacts, "first", "command"))
    for secret in (KEY, fleet["hf_token"], VAULT_PASSWORD):
        assert files_with(artifacts, secret) == []
        assert secret not in first_run["stdout"] and secret not in second_run["stdout"]
    # Nor anywhere else in the private data dir (the job's HOME, env/, the fact cache): the key only in
    # the file it was given in, the token only vaulted, the vault password only in this process.
    assert files_with(str(pdd), KEY) == [str(pdd / "env" / "extravars")]
    assert files_with(str(pdd), fleet["hf_token"]) == [] and files_with(str(pdd), VAULT_PASSWORD) == []
    assert not (pdd / "env" / "passwords").exists()
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in first_run["stdout"]   # passed at -vvvv, and masked


def test_second_run_changes_nothing(second_run):
    stats = assert_every_host_ok(second_run)
    assert stats["changed"] == {}, stats            # runner lists only hosts with changed > 0
    results = [e["event_data"] for e in second_run["events"] if e["event"] in ("runner_on_ok", "runner_item_on_ok")]
    assert {e["host"] for e in results} >= set(HOSTS)
    changed = [(e["host"], e["task"]) for e in results if e["res"].get("changed") is True]
    assert changed == [], changed
    assert {h: engine_started_at(h) for h in HOSTS} == second_run["engines_before"], "an engine was restarted"
    rows = summary_rows(second_run)
    assert sorted(rows) == HOSTS and all(" healthy " in row for row in rows.values()), rows
