"""The controller-side action plugins, through real ansible-playbook runs on local hosts: fleet_inputs (every
host's inventory against every role's argument spec, and the digest of those values) and controller_file."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from ansible_collections.gpufleet.serving.plugins.plugin_utils import role_inputs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

INPUTS_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - gpufleet.serving.fleet_inputs:
        roles: [engine, model_fetch]
        validate_only: [preflight]
      run_once: true
      register: inputs
    - ansible.builtin.copy:
        dest: "{{ playbook_dir }}/digests.json"
        content: "{{ inputs.digests | to_json }}"
      delegate_to: localhost
      run_once: true
"""


def play(tmp, playbook, host_vars, *args):
    """ansible-playbook on local hosts a and b with the given vars per host; returns (rc, output)."""
    inventory = {"all": {"children": {"fleet": {"hosts": {
        h: dict(v, ansible_connection="local", ansible_python_interpreter=sys.executable)
        for h, v in host_vars.items()}}}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "play.yml").write_text(playbook)
    (tmp / "ansible.cfg").write_text("")
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_FORCE_COLOR="0")
    done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp / "inventory.json"), str(tmp / "play.yml"), *args],
                          capture_output=True, text=True, env=env, cwd=str(tmp))
    return done.returncode, done.stdout + done.stderr


MODEL = {"model_fetch_repo_id": "org/model"}


def digests(tmp, host_vars):
    rc, output = play(tmp, INPUTS_PLAY, host_vars)
    assert rc == 0, output
    return json.loads((tmp / "digests.json").read_text())


def test_same_values_same_digest_and_any_role_input_changes_it(tmp_path):
    same = digests(tmp_path, {"a": dict(MODEL, engine_name="vllm"), "b": dict(MODEL, engine_name="vllm")})
    assert same["a"] == same["b"] and len(same["a"]) == 64
    other = digests(tmp_path, {"a": dict(MODEL, engine_name="vllm"), "b": dict(MODEL, engine_name="sglang")})
    assert other["a"] == same["a"] and other["b"] != same["b"]


def test_values_outside_the_digested_roles_do_not_count(tmp_path):
    base = digests(tmp_path, {"a": dict(MODEL), "b": dict(MODEL)})
    # preflight is validated, not digested (its fast-path switches must not make hosts drift); an
    # unrelated variable is no role input at all.
    more = digests(tmp_path, {"a": dict(MODEL, preflight_fast_path=False), "b": dict(MODEL, unrelated_var=1)})
    assert more == base


def test_bad_values_on_any_host_stop_the_run_naming_host_variable_and_fix(tmp_path):
    rc, output = play(tmp_path, INPUTS_PLAY, {"a": dict(MODEL), "b": dict(MODEL, engine_name="tgi")})
    assert rc != 0
    assert "Host b: inventory input for role engine is invalid" in output
    assert "engine_name" in output and "sglang, vllm" in output and "group_vars/host_vars" in output
    assert "Host a" not in output


def test_preflights_own_spec_is_checked(tmp_path):
    rc, output = play(tmp_path, INPUTS_PLAY, {"a": dict(MODEL, preflight_fast_path_max_age="soon"), "b": dict(MODEL)})
    assert rc != 0 and "Host a: inventory input for role preflight is invalid" in output
    assert "preflight_fast_path_max_age" in output


def test_content_fingerprint_follows_the_collection_files(tmp_path):
    root = tmp_path / "collection"
    for top in ("roles", "plugins", "data", "playbooks"):
        shutil.copytree(os.path.join(REPO, top), root / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "site.yml"), root / "site.yml")
    before = role_inputs.content_fingerprint.__wrapped__(str(root))
    assert before == role_inputs.content_fingerprint.__wrapped__(str(root))
    with open(root / "roles" / "engine" / "defaults" / "main.yml", "a") as f:
        f.write("\n# a changed default\n")
    assert role_inputs.content_fingerprint.__wrapped__(str(root)) != before


def test_input_names_cover_every_entry_point():
    names = role_inputs.input_names(["engine"])
    assert "engine_name" in names and "rollout_batch_size" in names  # main and rollout entry points


FILE_PLAY = """
- hosts: a
  gather_facts: false
  tasks:
    - gpufleet.serving.controller_file:
        dest: "{{ playbook_dir }}/out/targets.json"
        content: "{{ content }}"
        mode: "0640"
"""


@pytest.mark.parametrize("check", [False, True])
def test_controller_file_writes_once_and_respects_check_mode(tmp_path, check):
    flags = ["--check"] if check else []
    rc, output = play(tmp_path, FILE_PLAY, {"a": {"content": "[1]"}}, *flags)
    assert rc == 0 and "changed=1" in output, output
    target = tmp_path / "out" / "targets.json"
    if check:
        assert not target.exists()
        return
    assert target.read_text() == "[1]" and oct(target.stat().st_mode & 0o777) == "0o640"
    rc, output = play(tmp_path, FILE_PLAY, {"a": {"content": "[1]"}})
    assert rc == 0 and "changed=0" in output
    rc, output = play(tmp_path, FILE_PLAY, {"a": {"content": "[2]"}}, "--diff")
    assert rc == 0 and "changed=1" in output and "+[2]" in output and target.read_text() == "[2]"


def test_preflight_per_host_tasks_template_no_filter():
    """A filter in a per-host task makes every host's worker process load the filter plugins and compile
    the template again (0.05 s per host, docs/scale.md): fleet-wide values are joined by run_once tasks."""
    with open(os.path.join(REPO, "roles", "preflight", "tasks", "main.yml")) as handle:
        tasks = yaml.safe_load(handle)
    fleet_once = ("ansible.builtin.add_host",)  # runs once for the play whatever the hosts
    per_host = [t for t in tasks if not t.get("run_once") and not any(a in t for a in fleet_once)]
    assert [t["name"] for t in per_host] == ["Read the GPU facts and compare the host with its last converged state"]
    for task in per_host:
        values = json.dumps({k: v for k, v in task.items() if k != "name"})
        assert "|" not in values, "%s: %s" % (task["name"], values)
