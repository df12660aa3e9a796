"""Filters that look across the hosts of a play; they run once, on the controller. Also the engine
role's per-host bookkeeping: its instance planner (engine_instances, which needs the controller's
knowledge table), what it keeps for a rollback (engine_rollback_plan) and its rollout record
(engine_rollout_record, read by fleet_summary).

Documentation: the sidecar files converge_digests.yml, fleet_models.yml, model_key.yml, resolved_commits.yml,
pinned_commit.yml, fleet_summary.yml, prometheus_file_sd.yml, engine_instances.yml, engine_rollback_plan.yml,
engine_swap_repair.yml and engine_rollout_record.yml.
"""
import json

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.plugin_utils import engine_deploy
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import KnowledgeError


def model_key(repo_id, revision, endpoint):
    """One string naming a model reference, so hosts can find the fleet-wide resolution of theirs."""
    return "|".join(str(part) for part in (repo_id, revision or "main", endpoint or ""))


def resolved_commits(results):
    """{model key: commit sha} from the registered results of preflight's resolve loop."""
    return dict((r["item"]["key"], r["commit_sha"]) for r in results or [] if r.get("commit_sha"))


def pinned_commit(commits, repo_id, revision, endpoint=None):
    """The commit the fleet resolved this host's model reference to; None when it was not resolved
    (offline hosts, or no model)."""
    return (commits or {}).get(model_key(repo_id, revision, endpoint)) if repo_id else None


def converge_digests(hostvars, input_digests, commits):
    """{host: "<inputs digest>:<pinned model commit>"}: what each host's converge stamp must match.

    Computed once for the fleet, so the per-host task that compares stamps templates one plain
    lookup: a filter in a per-host template would load the filter plugins again in every worker
    process, which costs more than the comparison (docs/scale.md)."""
    digests = {}
    for host, digest in (input_digests or {}).items():
        commit = pinned_commit(commits, *_model_reference(hostvars[host]))
        digests[host] = "%s:%s" % (digest, commit or "")
    return digests


def _model_reference(host_vars):
    """(repo_id, revision, endpoint) of the model a host's inventory asks model_fetch for."""
    return (host_vars.get("model_fetch_repo_id"), host_vars.get("model_fetch_revision") or "main",
            host_vars.get("model_fetch_hf_endpoint") or None)


def fleet_models(hostvars, hosts):
    seen = {}
    for host in hosts:
        hv = hostvars[host]
        repo_id, revision, endpoint = _model_reference(hv)
        if not repo_id or hv.get("model_fetch_offline"):  # offline: no endpoint is ever contacted
            continue
        key = model_key(repo_id, revision, endpoint)
        seen.setdefault(key, {"key": key, "repo_id": repo_id, "revision": revision,
                              "endpoint": endpoint, "host": host})
    return list(seen.values())


def _gpu_label(gpu):
    gpus = gpu.get("gpus") or []
    if not gpus:
        return gpu.get("state", "unknown")
    return f"{len(gpus)}x {gpus[0]['name']}"


def _release(container):
    """'sglang-0.5.23@0bd5fd24e3dc' from a container's labels (engine role), 'none' without one.

    No single spaces: the YAML callback folds long lines at single spaces, breaking the table.
    """
    if not container:
        return "none"
    labels = container.get("labels") or {}
    if not labels.get("gpufleet.engine"):
        return container.get("image") or "unknown"
    sha = (labels.get("gpufleet.model_sha") or "")[:12]
    return "%s-%s%s" % (labels["gpufleet.engine"], labels.get("gpufleet.engine_version", ""), "@" + sha if sha else "")


def _releases(instances):
    """Per instance 'before->after', or one release when nothing moved; instances joined by ','."""
    seen = []
    for instance in instances:
        before, after = _release(instance.get("before")), _release(instance.get("after"))
        text = after if before == after else "%s->%s" % (before, after)
        if text not in seen:
            seen.append(text)
    return ",".join(seen) or "-"


def _unreachable(hv):
    """The message of the rollout's reachability probe when it found the host unreachable, else None."""
    reach = hv.get("engine_reach") or {}
    return (reach.get("msg") or "unreachable") if reach.get("unreachable") else None


def _rollout_status(rollout, lost, not_rolled_out=False):
    if rollout.get("cause"):
        return "ROLLED-BACK" if rollout.get("rolled_back") else "FAILED"
    if lost:
        return "UNREACHABLE/FAILED"
    if not_rolled_out:
        return "NOT-ROLLED-OUT"
    if not rollout:
        return "-"
    return "updated" if any(i.get("replaced") for i in rollout.get("instances") or []) else "unchanged"


def fleet_summary(hostvars, hosts, lost=None, stopped=None):
    """Rows of host | GPU | engine | model@sha | health | time to healthy | release | rollout, as aligned text lines.

    `lost`: hosts the play lost (unreachable or failed); the rollout column says so, as it does for hosts
    the rollout's reachability probe found unreachable (engine_reach). `stopped`: the rollout's stop
    (rollout_gate, the gpufleet_rollout_stopped fact): its hosts not rolled out say NOT-ROLLED-OUT and its
    message ends the report. After the table, one line per host whose rollout failed, with the cause.
    """
    lost = set(lost or ())
    stopped = stopped or {}
    not_rolled_out = set(stopped.get("not_rolled_out") or ())
    rows = [("host", "gpu", "engine", "model", "revision", "health", "ready_s", "ttft_ms", "tok/s",
             "before->after", "rollout")]
    causes = []
    for host in hosts:
        hv = hostvars[host]
        plan = hv.get("engine_plan") or {}
        health = hv.get("engine_health_result") or {}
        fetched = hv.get("model_fetch_result") or {}
        rollout = hv.get("engine_rollout") or {}
        instances = rollout.get("instances") or []
        unreachable = _unreachable(hv)
        rows.append((
            host,
            _gpu_label(hv.get("gpufleet_gpu") or {}),
            f"{plan.get('engine', '-')} {plan.get('engine_version', '')}".strip(),
            hv.get("model_fetch_repo_id") or "-",
            (fetched.get("commit_sha") or (hv.get("gpufleet_model") or {}).get("commit_sha") or "-")[:12],
            "healthy" if health.get("healthy") else ("FAILED" if health else "not reached"),
            _fmt(health.get("time_to_healthy_s")),
            _fmt(health.get("ttft_ms")),
            _fmt(health.get("tokens_per_s")),
            _releases(instances),
            _rollout_status(rollout, host in lost or unreachable is not None, host in not_rolled_out),
        ))
        if rollout.get("cause"):
            causes.append(f"{host}: {rollout['cause']}")
        elif unreachable and (hv.get("engine_reach") or {}).get("during_deployment"):
            causes.append(f"{host}: lost during its deployment, what it runs now is unknown: {unreachable.strip()}")
        elif unreachable:
            causes.append(f"{host}: unreachable when its batch started, not changed: {unreachable.strip()}")
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return table + causes + ([stopped["message"]] if stopped.get("message") else [])


def _fmt(value):
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def _serves_this_run(hv):
    """True when this run knows what the host serves: its engines were deployed (or found converged) and
    no rollout failure or lost connection leaves that in doubt."""
    return bool(hv.get("engine_deployments")) and not (hv.get("engine_rollout") or {}).get("cause") \
        and not _unreachable(hv)


def prometheus_file_sd(hostvars, hosts, previous=None, inventory_hosts=None):
    """Prometheus file_sd target groups: every engine instance (and DCGM exporter) of the hosts.

    A host's targets come from this run when it knows what the host serves (_serves_this_run). Any other
    host still in ``inventory_hosts`` keeps the targets ``previous`` (the file's current JSON text) lists for
    it: hosts outside this run (--limit), and hosts that failed preflight, were not reached, were lost, were
    not rolled out by a stopped rollout, or were put back on their previous containers - their engines keep
    serving, so they must stay monitored. Hosts gone from the inventory are dropped."""
    fresh = [h for h in hosts if _serves_this_run(hostvars[h])]
    kept = set(inventory_hosts or hosts) - set(fresh)
    try:
        old = json.loads(previous) if previous else []
    except ValueError:
        old = []
    groups = [g for g in old if isinstance(g, dict) and (g.get("labels") or {}).get("host") in kept]
    for host in fresh:
        hv = hostvars[host]
        address = hv.get("ansible_host") or host
        model = (hv.get("gpufleet_model") or {}).get("repo_id") or hv.get("model_fetch_repo_id") or ""
        for deployment in hv.get("engine_deployments") or []:
            plan = deployment["plan"]
            groups.append({"targets": [f"{address}:{deployment['port']}"],
                           "labels": {"host": host, "engine": plan["engine"], "engine_version": plan["engine_version"],
                                      "model": model, "gpu": deployment["gpu_label"],
                                      "container": deployment["name"], "exporter": "engine"}})
        dcgm = hv.get("dcgm_exporter_deployed")
        if dcgm:
            groups.append({"targets": [f"{address}:{dcgm['port']}"],
                           "labels": {"host": host, "gpu": _gpu_label(hv.get("gpufleet_gpu") or {}),
                                      "container": dcgm["name"], "exporter": "dcgm"}})
    # In inventory order whichever hosts this run saw: a --limit run that changes nothing writes the same file.
    order = {}
    for h in list(inventory_hosts or []) + list(hosts):
        order.setdefault(h, len(order))
    return sorted(groups, key=lambda g: order.get(g["labels"].get("host"), len(order)))


def engine_instances(gpu_facts, instances=None, **kwargs):
    """The engine role's deployments: one plan and container spec per instance (plugin_utils/engine_deploy)."""
    try:
        return engine_deploy.deployments(gpu_facts, instances, **kwargs)
    except (PlanError, KnowledgeError) as exc:
        raise AnsibleFilterError(str(exc)) from exc


def engine_rollback_plan(containers, names, replaced):
    """The engine role's containers to keep for rollback (plugin_utils/engine_deploy.rollback_plan)."""
    return engine_deploy.rollback_plan(containers, list(names), list(replaced))


def engine_swap_repair(containers):
    """What an interrupted swap left to repair first (plugin_utils/engine_deploy.swap_repair)."""
    return engine_deploy.swap_repair(containers)


def engine_rollout_record(before, after, names, replaced, restored=(), failure=None, healthy=None):
    """The engine role's engine_rollout fact (plugin_utils/engine_deploy.rollout_record)."""
    return engine_deploy.rollout_record(before, after, list(names), list(replaced), list(restored), failure, healthy)


def engine_docker_config_restored(record, healthy, failure=None):
    """The engine_rollout fact once the previous daemon.json is back (plugin_utils/engine_deploy.docker_config_restored)."""
    return engine_deploy.docker_config_restored(record, healthy, failure)


class FilterModule:
    def filters(self):
        return {"converge_digests": converge_digests, "fleet_models": fleet_models, "model_key": model_key,
                "resolved_commits": resolved_commits, "pinned_commit": pinned_commit, "fleet_summary": fleet_summary,
                "prometheus_file_sd": prometheus_file_sd, "engine_instances": engine_instances,
                "engine_rollback_plan": engine_rollback_plan, "engine_swap_repair": engine_swap_repair,
                "engine_rollout_record": engine_rollout_record,
                "engine_docker_config_restored": engine_docker_config_restored}
