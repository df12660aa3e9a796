# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""What a host's converge stamp fingerprints and keeps (gpufleet.serving.converge_stamp, docs/scale.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# The container runtime configuration container_toolkit merges its keys into.
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
# What the fleet summary and the Prometheus targets read of the engine's health result.
HEALTH_KEYS = ("healthy", "time_to_healthy_s", "ttft_ms", "tokens_per_s", "engine_version", "models")


def _unchanged(rollout):
    """The rollout record as the next run sees it: every instance as it is now, none replaced."""
    instances = [{"name": i["name"], "before": i.get("after"), "after": i.get("after"), "replaced": False}
                 for i in (rollout or {}).get("instances") or [] if i.get("after")]
    return {"instances": instances, "rolled_back": False, "cause": None}


def converge_record(hostvars):
    """The O(record) of converge_stamp for a host that was just proven healthy, from its hostvars."""
    model = hostvars.get("gpufleet_model") or {}
    deployments = hostvars.get("engine_deployments") or []
    dcgm = hostvars.get("dcgm_exporter_deployed")
    health = hostvars.get("engine_health_result") or {}
    trees = [model.get("dir")] + [m.get("dir") for m in model.get("extra_models") or []]
    return {
        "gpu": hostvars.get("gpufleet_gpu"),
        "files": [DOCKER_DAEMON_JSON],
        "trees": [t for t in trees if t],
        "containers": [d["name"] for d in deployments] + ([dcgm["name"]] if dcgm else []),
        "health": ["http://127.0.0.1:%s" % d["port"] for d in deployments],
        "facts": {
            "gpufleet_model": model,
            "model_fetch_result": {"commit_sha": model.get("commit_sha"), "dir": model.get("dir")},
            "engine_plan": hostvars.get("engine_plan"),
            "engine_deployments": deployments,
            "engine_health_result": dict((k, health.get(k)) for k in HEALTH_KEYS if k in health),
            "engine_rollout": _unchanged(hostvars.get("engine_rollout")),
            "dcgm_exporter_deployed": dcgm,
        },
    }


def converged_hosts(hosts, hostvars):
    """The hosts this run's preflight found converged. Reads the registered check (preflight_converge),
    never the cached gpufleet_converge fact, which may be left from an earlier run."""
    return [h for h in hosts if (hostvars[h].get("preflight_converge") or {}).get("converged")]


def converge_report(hostvars, hosts):
    """One line per host that takes the full run, with why; a count of those that do not."""
    drifted, converged = [], 0
    for host in hosts:
        state = hostvars[host].get("gpufleet_converge") or {}
        if state.get("converged"):
            converged += 1
        else:
            drifted.append("%s: %s" % (host, "; ".join(state.get("reasons") or ["not checked"])))
    return ["%d of %d hosts are as their last run left them and skip the roles" % (converged, len(hosts))] + drifted


class FilterModule:
    def filters(self):
        return {"converge_record": converge_record, "converge_report": converge_report, "converged_hosts": converged_hosts}
