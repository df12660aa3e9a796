"""Static checks of the rollout's roles and playbooks: argument specs match the defaults, the DCGM
exporter role (which cannot run in the lab: no real GPU) is pinned, off by default and well formed,
and the playbooks parse."""
import os
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def role_file(role, path):
    with open(os.path.join(REPO, "roles", role, path), encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("role", ["engine", "dcgm_exporter", "gateway"])
def test_every_default_is_specified_with_the_same_default_and_is_valid(role):
    defaults = role_file(role, "defaults/main.yml")
    entries = role_file(role, "meta/argument_specs.yml")["argument_specs"]
    options = {}
    for entry in entries.values():
        options.update(entry["options"])
    assert sorted(set(defaults) - set(options)) == []
    for name, value in defaults.items():
        if "default" in options[name] and "{{" not in str(value):
            assert options[name]["default"] == value, name
    for entry in entries.values():
        literal = {k: v for k, v in defaults.items() if k in entry["options"] and "{{" not in str(v)}
        result = ArgumentSpecValidator(entry["options"]).validate(literal)
        assert not result.error_messages, result.error_messages


def test_rollout_entry_point_covers_the_main_options():
    """playbooks/rollout.yml enters the engine role through `rollout`: its spec must check the engine inputs too."""
    entries = role_file("engine", "meta/argument_specs.yml")["argument_specs"]
    assert set(entries["main"]["options"]) < set(entries["rollout"]["options"])
    assert entries["main"]["options"]["engine_instances"]["options"]["name"]["required"] is True


def test_dcgm_exporter_is_pinned_and_off_by_default():
    defaults = role_file("dcgm_exporter", "defaults/main.yml")
    assert defaults["dcgm_exporter_enabled"] is False
    repo, tag = defaults["dcgm_exporter_image"].rsplit(":", 1)
    assert repo == "nvcr.io/nvidia/k8s/dcgm-exporter" and tag[0].isdigit() and "latest" not in tag
    tasks = role_file("dcgm_exporter", "tasks/main.yml")
    container = next(t["community.docker.docker_container"] for t in tasks if "community.docker.docker_container" in t)
    assert container["device_requests"] == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    assert container["ports"] == ["{{ dcgm_exporter_port }}:9400"]
    assert all(next(iter(k for k in t if "." in k)).startswith(("ansible.builtin.", "community.docker."))
               for t in tasks)


@pytest.mark.parametrize("playbook", ["site.yml", "playbooks/rollout.yml", "playbooks/benchmark.yml"])
def test_playbooks_parse(playbook):
    done = subprocess.run([PLAYBOOK, "--syntax-check", playbook, "-e", "dcgm_exporter_enabled=true"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("kind, plugins", [
    ("filter", ["engine_instances", "engine_rollback_plan", "engine_rollout_record", "prometheus_file_sd", "fleet_summary"]),
    ("module", ["engine_benchmark", "benchmark_report", "engine_health"]),
    # the fleet-scale plugins (docs/scale.md)
    ("filter", ["converge_digests", "converge_record", "converge_report", "converged_hosts", "engine_image_ref",
                "pinned_commit", "resolved_commits"]),
    ("module", ["converge_stamp", "fleet_inputs", "controller_file", "gpu_facts"]),
])
def test_plugin_documentation_renders(kind, plugins):
    doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    done = subprocess.run([doc, "-t", kind, *("gpufleet.serving." + p for p in plugins)],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
