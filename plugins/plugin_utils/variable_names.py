# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Inventory variables that look like the collection's but are none of its (controller side, plain Python).

A misspelled name (engine_overides) is otherwise ignored by Ansible: the role silently uses its default.
The collection's names are what the roles' meta/argument_specs.yml declare; a name is "the collection's
kind" when it starts with one of the prefixes those names use (docs/CONTRACTS.md "Variable names").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import functools
import os

from ansible_collections.gpufleet.serving.plugins.plugin_utils import role_inputs

# Names the collection sets itself while it runs, never inputs. They reach hostvars as facts (converge_stamp
# hands some back and ansible.cfg keeps facts in a cache between runs), set_fact or register results, and
# the action plugin leaves those out by where they come from; this list is the same knowledge written down,
# so that a fact of an earlier run is never reported even where Ansible's variable manager cannot be asked.
# tests/unit/test_fleet_inputs.py checks it holds every set_fact/register/fact name of roles/, playbooks/
# and site.yml that no argument spec declares.
RUNTIME_NAMES = frozenset((
    # facts of the collection's modules (ansible_facts) and of set_fact, kept in the fact cache
    "gpufleet_gpu", "gpufleet_converge", "gpufleet_model", "gpufleet_model_commits", "gpufleet_driver_host",
    "gpufleet_container_host",
    # the run lock (roles/preflight/tasks/lock.yml)
    "gpufleet_run_lock",
    # preflight (roles/preflight/tasks/main.yml)
    "preflight_inputs", "preflight_models", "preflight_digests", "preflight_converge", "preflight_plan_hosts",
    "gpufleet_model_plans", "engine_preflight_plan_errors",
    # nvidia_driver
    "nvidia_driver_plan", "nvidia_driver_check", "nvidia_driver_packages", "nvidia_driver_blacklist",
    "nvidia_driver_activation",
    # container_toolkit
    "container_toolkit_plan", "container_toolkit_daemon_json", "container_toolkit_gpu_check_plan",
    "container_toolkit_gpu_run", "container_toolkit_running", "container_toolkit_runtime_registered",
    "container_toolkit_daemon_written", "container_toolkit_docker_changed", "container_toolkit_config_changes",
    # model_fetch
    "model_fetch_result", "model_fetch_snapshots", "model_fetch_snapshot_results", "model_fetch_fleet_wants",
    "model_fetch_lacking", "model_fetch_seed_adopted", "model_fetch_seed_fetched", "model_fetch_containers",
    "model_fetch_client_version",
    "engine_snapshots_found",
    # engine (deploy, rollback, health, gateways, benchmark, report)
    "engine_plan", "engine_deployments", "engine_health_result", "engine_health_results", "engine_rollout",
    "engine_address", "engine_after", "engine_before", "engine_check", "engine_container", "engine_drain_wait",
    "engine_failure", "engine_gateway_query", "engine_gateways", "engine_image_fetched", "engine_image_prefetch",
    "engine_left", "engine_model_config", "engine_replaced", "engine_restored", "engine_rollback",
    "engine_rollback_health", "engine_secrets_file", "engine_bench_host", "engine_bench_report",
    "engine_bench_runs", "engine_benchmark",
    # engine rollout (batch gate, reachability probe, swap repair; model_on_host.yml when run alone)
    "engine_batch", "engine_reach", "engine_repaired", "gpufleet_rollout_stopped", "engine_snapshots",
    "engine_manifests", "engine_indexes", "gpufleet_docker_config_pending",
    # engine: Docker's previous configuration, put back on a failed host (docker_config_restore.yml)
    "engine_docker_config_before", "engine_docker_config_rewritten", "engine_docker_config_removed",
    "engine_docker_journal", "engine_reach_after",
    # dcgm_exporter
    "dcgm_exporter_deployed", "dcgm_exporter_container", "dcgm_exporter_metrics",
    # gateway (its hosts' facts, read by the engine role and the reports)
    "gateway_state", "gateway_backends", "gateway_config_file", "gateway_container", "gateway_ping",
    "gateway_query", "gateway_sync",
))


@functools.lru_cache(maxsize=None)
def roles(root=role_inputs.COLLECTION_ROOT):
    """Every role of the collection that has an argument spec."""
    base = os.path.join(root, "roles")
    return tuple(sorted(r for r in os.listdir(base)
                        if os.path.isfile(os.path.join(base, r, "meta", "argument_specs.yml"))))


@functools.lru_cache(maxsize=None)
def declared_names(root=role_inputs.COLLECTION_ROOT):
    """Every variable any entry point of any role declares: a gateway_ variable on a GPU host is no typo."""
    return frozenset(role_inputs.input_names(roles(root), root))


@functools.lru_cache(maxsize=None)
def prefixes(root=role_inputs.COLLECTION_ROOT):
    """The role names (engine_, model_fetch_, ...) and the first word of each declared name that starts with
    no role name (rollout_, benchmark_, gpufleet_). Not "model_" from model_fetch_*: a name of the user's
    own such as model_name must stay theirs."""
    found = set(r + "_" for r in roles(root))
    for name in declared_names(root):
        if not name.startswith(tuple(found)):
            found.add(name.split("_", 1)[0] + "_")
    return tuple(sorted(found))


def unknown_names(names, allowed=(), root=role_inputs.COLLECTION_ROOT):
    """The names that start like the collection's but that it neither declares nor sets, sorted."""
    declared = declared_names(root)
    return sorted(n for n in names if isinstance(n, str) and n.startswith(prefixes(root))
                  and n not in declared and n not in RUNTIME_NAMES and n not in allowed)


def suggestion(name, root=role_inputs.COLLECTION_ROOT):
    """The closest declared name, or None."""
    close = difflib.get_close_matches(name, sorted(declared_names(root)), n=1, cutoff=0.6)
    return close[0] if close else None


def error_message(host, names, root=role_inputs.COLLECTION_ROOT):
    """One message for a host, naming each unknown variable and the declared name it most looks like."""
    parts = []
    for name in names:
        close = suggestion(name, root)
        parts.append("%s is not a variable of gpufleet.serving (%s)" % (
            name, "did you mean %s?" % close if close else "no declared name is close"))
    return "%s: %s." % (host, "; ".join(parts))


HINT = ("Fix or remove the variable (inventory group_vars/host_vars, or -e); the roles' meta/argument_specs.yml "
        "declare every variable, and a variable of your own with such a name goes in preflight_allowed_variables. "
        "Nothing was changed.")


def inventory_names(hostvars, host):
    """Names of a host's variables that come from the inventory (files, vars plugins) or extra vars.

    hostvars[host] also holds what the run itself set: facts (the fact cache keeps them between runs),
    set_fact and register results, include_vars. Those are taken out by where they come from - the
    variable manager's three caches (ansible-core internals, unchanged since 2.4; when they are missing,
    RUNTIME_NAMES alone keeps the collection's own facts out). Extra vars are always the user's."""
    names = set(hostvars[host])
    manager = getattr(hostvars, "_variable_manager", None)
    if manager is None:
        return names
    try:
        facts = manager._fact_cache.get(host) or {}
    except Exception:  # no fact of that host cached (KeyError), or a cache plugin that cannot be read
        facts = {}
    run_set = set(facts)
    run_set.update(getattr(manager, "_nonpersistent_fact_cache", {}).get(host) or {})
    run_set.update(getattr(manager, "_vars_cache", {}).get(host) or {})
    return (names - run_set) | set(getattr(manager, "extra_vars", None) or {})
