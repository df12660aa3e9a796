"""The controller-side action plugins, through real ansible-playbook runs on local hosts: fleet_inputs (every
host's inventory against every role's argument spec, and the digest of those values) and controller_file."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from ansible_collections.gpufleet.serving.plugins.modules import converge_stamp
from ansible_collections.gpufleet.serving.plugins.plugin_utils import role_inputs, variable_names

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


def play(tmp, playbook, host_vars, *args, cfg=""):
    """ansible-playbook on local hosts a and b with the given vars per host; returns (rc, output)."""
    inventory = {"all": {"children": {"fleet": {"hosts": {
        h: dict(v, ansible_connection="local", ansible_python_interpreter=sys.executable)
        for h, v in host_vars.items()}}}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "play.yml").write_text(playbook)
    (tmp / "ansible.cfg").write_text(cfg)
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_FORCE_COLOR="0")
    done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp / "inventory.json"), str(tmp / "play.yml"), *args],
                          capture_output=True, text=True, env=env, cwd=str(tmp), check=False)
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
    assert [t["name"] for t in per_host] == ["Read the GPU facts and compare the host with its last converged state",
                                             "Plan each engine of the hosts that take the run, from the hub's config.json"]
    for task in per_host:
        values = json.dumps({k: v for k, v in task.items() if k != "name"})
        assert "|" not in values, "%s: %s" % (task["name"], values)


# Misspelled names (plugin_utils/variable_names.py): a name that starts like the collection's but that no role
# declares would be ignored by Ansible, and the role would run on its default.

def test_prefixes_come_from_the_roles_and_their_specs():
    found = variable_names.prefixes()
    for prefix in ("engine_", "model_fetch_", "rollout_", "gateway_", "nvidia_driver_", "container_toolkit_",
                   "preflight_", "dcgm_exporter_", "benchmark_", "gpufleet_"):
        assert prefix in found
    assert "model_" not in found and "nvidia_" not in found  # model_name stays the user's own


def test_unknown_names_and_the_closest_declared_one():
    names = ["engine_overides", "model_fetch_revison", "engine_overrides", "model_name", "ansible_host",
             "engine_plan", "gpufleet_gpu", "my_engine_thing", "engine_mine"]
    assert variable_names.unknown_names(names, allowed=["engine_mine"]) == ["engine_overides", "model_fetch_revison"]
    assert variable_names.error_message("hopper-1", ["engine_overides"]) == (
        "hopper-1: engine_overides is not a variable of gpufleet.serving (did you mean engine_overrides?).")
    assert "no declared name is close" in variable_names.error_message("h", ["engine_qqqqqqqqqqqqqqqqqqqqq"])


def test_misspelled_inventory_variable_stops_preflight_naming_host_and_fix(tmp_path):
    rc, output = play(tmp_path, INPUTS_PLAY, {"a": dict(MODEL), "b": dict(MODEL, engine_overides={"--x": 1})})
    assert rc != 0
    assert "b: engine_overides is not a variable of gpufleet.serving (did you mean engine_overrides?)" in output
    assert "a: " not in output and "preflight_allowed_variables" in output and "Nothing was changed" in output


def test_misspelled_names_from_host_vars_files_and_extra_vars_are_found_on_every_host(tmp_path):
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "a.yml").write_text("rollout_batchsize: 2\n")
    rc, output = play(tmp_path, INPUTS_PLAY, {"a": dict(MODEL), "b": dict(MODEL)}, "-e", "model_fetch_revison=v1")
    assert rc != 0
    assert ("a: model_fetch_revison is not a variable of gpufleet.serving (did you mean model_fetch_revision?); "
            "rollout_batchsize is not a variable of gpufleet.serving (did you mean rollout_batch_size?).") in output
    assert "b: model_fetch_revison is not a variable" in output and "b: rollout_batchsize" not in output


def test_own_variables_can_be_allowed(tmp_path):
    rc, output = play(tmp_path, INPUTS_PLAY, {
        "a": dict(MODEL, engine_site_overrides={}, preflight_allowed_variables=["engine_site_overrides"]),
        "b": dict(MODEL, model_name="x", unrelated_var=1)})  # no collection prefix: not looked at
    assert rc == 0, output


# Facts, set_fact, register and include_vars results are the run's own, never inventory: the names below are
# in no allowlist, so only where they come from keeps them out. The cacheable fact comes from the fact cache of
# an earlier run, as converge_stamp's facts (engine_plan, ...) do on every run.
CACHE_CFG = "[defaults]\nfact_caching = jsonfile\nfact_caching_connection = ./facts\n"
SET_CACHED_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact: {engine_cached_scratch: 1, cacheable: true}
"""
FACTS_THEN_INPUTS_PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.set_fact: {rollout_scratch_fact: 1}
    - ansible.builtin.debug: {msg: registered}
      register: model_fetch_scratch_result
    - ansible.builtin.include_vars: {file: "{{ playbook_dir }}/more.yml"}
- hosts: fleet
  gather_facts: false
  tasks:
    - gpufleet.serving.fleet_inputs:
        roles: [engine, model_fetch]
        validate_only: [preflight]
      run_once: true
"""


def test_facts_and_results_of_the_run_are_not_taken_for_misspellings(tmp_path):
    (tmp_path / "more.yml").write_text("gateway_scratch_included: 1\n")
    hosts = {"a": dict(MODEL), "b": dict(MODEL)}
    rc, output = play(tmp_path, SET_CACHED_PLAY, hosts, cfg=CACHE_CFG)
    assert rc == 0, output
    rc, output = play(tmp_path, FACTS_THEN_INPUTS_PLAY, hosts, cfg=CACHE_CFG)
    assert rc == 0, output
    # the same run with one misspelled inventory name: only that one is named
    rc, output = play(tmp_path, FACTS_THEN_INPUTS_PLAY, dict(hosts, a=dict(MODEL, engine_imag="x")), cfg=CACHE_CFG)
    assert rc != 0 and "a: engine_imag is not a variable of gpufleet.serving (did you mean engine_image?)." in output
    assert "scratch" not in output.split("fleet_inputs")[-1]


def _set_and_registered_names(node, found):
    if isinstance(node, list):
        for item in node:
            _set_and_registered_names(item, found)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("ansible.builtin.set_fact", "set_fact") and isinstance(value, dict):
                found.update(n for n in value if n != "cacheable")
            elif key == "register" and isinstance(value, str):
                found.add(value)
            elif key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
                _set_and_registered_names(value, found)


def test_every_name_the_collection_sets_is_declared_or_allowlisted():
    """RUNTIME_NAMES must not rot: a new set_fact/register/fact name with a collection prefix goes there."""
    found = set()
    paths = [os.path.join(REPO, "site.yml")] + [
        os.path.join(d, f) for top in ("roles", "playbooks") for d, _unused, files in os.walk(os.path.join(REPO, top))
        for f in files if f.endswith(".yml") and (top == "playbooks" or os.path.basename(d) == "tasks")]
    for path in paths:
        with open(path) as handle:
            _set_and_registered_names(yaml.safe_load(handle), found)
    for path in glob.glob(os.path.join(REPO, "plugins", "modules", "*.py")):
        with open(path) as handle:
            found.update(re.findall(r"ansible_facts=\{\"(\w+)\"", handle.read()))
    found.update(converge_stamp.KEPT_FACTS + ("gpufleet_converge",))  # the facts the stamp check hands back
    assert "engine_plan" in found and "gpufleet_gpu" in found
    assert variable_names.unknown_names(found) == []


@pytest.mark.parametrize("inventory", ["lab", "prod"])
def test_shipped_inventories_have_no_misspelled_names(inventory):
    names = set()
    for path in glob.glob(os.path.join(REPO, "inventories", inventory, "group_vars", "*.yml")):
        with open(path) as handle:
            names.update(yaml.safe_load(handle) or {})
    assert names and variable_names.unknown_names(names) == []


def test_site_yml_stops_in_preflight_on_a_misspelled_variable(tmp_path):
    """The real site.yml on a local host: the misspelling ends the run at its first preflight task."""
    inventory = {"all": {"children": {"gpu_hosts": {"hosts": {"gpu-1": dict(
        MODEL, ansible_connection="local", ansible_python_interpreter=sys.executable, engine_overides={"--x": 1})}}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "ansible.cfg").write_text("")
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="false")
    done = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.json"), os.path.join(REPO, "site.yml")],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "gpu-1: engine_overides is not a variable of gpufleet.serving (did you mean engine_overrides?)." in output
    assert "PLAY [Run lock" not in output and "PLAY [Host stack" not in output, output[-3000:]
