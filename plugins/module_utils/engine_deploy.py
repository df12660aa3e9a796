# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Several engines on one host, one per GPU set: `engine_instances` -> one launch plan and one
container spec each (roles/engine). Pure Python; the planner is plugins/module_utils/engine_plan.

No `engine_instances` means one instance on every GPU, named `engine_container_name`, with
`engine_overrides`: exactly the single-engine behaviour.
"""
from __future__ import annotations

import copy
import re

from ansible_collections.gpufleet.serving.plugins.module_utils.engine_plan import PlanError, build_plan, plan_hash
from ansible_collections.gpufleet.serving.plugins.module_utils.knowledge import version_tuple

# What Docker accepts as a container name.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
PREVIOUS_SUFFIX = "-previous"


def gpu_subset(facts, indices):
    """The gpufleet_gpu facts as if the host had only the GPUs with these indices."""
    gpus = [g for g in facts.get("gpus") or [] if g.get("index") in indices]
    subset = copy.deepcopy(facts)
    subset.update({
        "gpus": copy.deepcopy(gpus),
        "count": len(gpus),
        "memory_total_mib": sum(g["memory_mib"] for g in gpus),
        "memory_min_mib": min(g["memory_mib"] for g in gpus),
        "homogeneous": len({(g.get("name"), g["memory_mib"]) for g in gpus}) == 1,
        "compute_capability": min((str(g["compute_capability"]) for g in gpus), key=version_tuple),
    })
    return subset


def resolve(instances, default_name, gpu_facts, host="this host"):
    """Validated instance specs: [{name, gpus (indices or None = all), port (or None), overrides}]."""
    if not instances:
        return [{"name": default_name, "gpus": None, "port": None, "overrides": {}}]
    known = [g.get("index") for g in (gpu_facts or {}).get("gpus") or []]
    result, names, taken = [], set(), {}
    for i, spec in enumerate(instances):
        where = "%s: engine_instances[%d]" % (host, i)
        if not isinstance(spec, dict) or not spec.get("name"):
            raise PlanError("%s needs a name (the container name)" % where)
        name = str(spec["name"])
        if not _NAME.match(name) or name.endswith(PREVIOUS_SUFFIX):
            raise PlanError("%s: name %r is not a usable container name (letters, digits, _.-; not ending in %s)"
                            % (where, name, PREVIOUS_SUFFIX))
        if name in names:
            raise PlanError("%s: name %r is used twice; each instance is its own container" % (where, name))
        names.add(name)
        gpus = spec.get("gpus")
        if gpus is None and len(instances) > 1:
            raise PlanError("%s (%s): give its GPU indices (gpus: [...]); several instances cannot all use every GPU"
                            % (where, name))
        if gpus is not None:
            gpus = [int(g) for g in gpus]
            missing = [g for g in gpus if g not in known]
            if not gpus or missing:
                raise PlanError("%s (%s): GPU indices %s do not exist; the host has GPUs %s"
                                % (where, name, missing or "[]", ", ".join(map(str, known))))
            for g in gpus:
                if g in taken:
                    raise PlanError("%s (%s): GPU %d is already given to instance %s" % (where, name, g, taken[g]))
                taken[g] = name
        result.append({"name": name, "gpus": gpus, "port": spec.get("port"), "overrides": dict(spec.get("overrides") or {})})
    return result


def _pin_devices(plan, gpus):
    """Request exactly the instance's GPUs: the planner, given a subset, would ask for 'all'."""
    used = gpus[:plan["decisions"]["tp_size"]]
    container = plan["container"]
    container["gpus"] = used
    container["device_requests"] = [{"driver": "nvidia", "capabilities": [["gpu"]],
                                     "device_ids": [str(i) for i in used]}]
    plan["plan_hash"] = plan_hash(plan)
    return plan


def _ulimits(plan, ulimits):
    """docker_container spells a ulimit "name:soft:hard"; `ulimits` None keeps the plan's."""
    chosen = plan["container"]["ulimits"] if ulimits is None else ulimits
    return ["%s:%s:%s" % (u["name"], u["soft"], u["hard"]) for u in chosen]


def deployments(gpu_facts, instances=None, name="gpufleet-engine", overrides=None, model=None, model_sha=None,
                secrets_dir=None, gpu_requests=True, ulimits=None, planner=build_plan, **plan_kwargs):
    """One entry per engine instance: {name, gpus, port, plan, gpu_label, container, probe}.

    `container` holds the docker_container parameters the role passes through unchanged; `probe`
    is what the health gate needs (small, so a failed check does not print the whole plan).
    `plan_kwargs` go to the planner (engine, engine_version, preset, image, host, api_key).
    """
    host = plan_kwargs.get("host") or "this host"
    result, ports = [], {}
    for spec in resolve(instances, name, gpu_facts, host):
        facts = gpu_subset(gpu_facts, spec["gpus"]) if spec["gpus"] else gpu_facts
        merged = dict(overrides or {})
        merged.update(spec["overrides"])
        if spec["port"] is not None:
            merged["--port"] = spec["port"]
        try:
            plan = planner(facts, model=model, overrides=merged, **plan_kwargs)
        except PlanError as exc:
            raise PlanError("%s (instance %s)" % (exc, spec["name"])) if instances else exc
        if spec["gpus"]:
            plan = _pin_devices(plan, spec["gpus"])
        if plan["port"] in ports:
            raise PlanError("%s: instances %s and %s both listen on port %s: give each a port"
                            % (host, ports[plan["port"]], spec["name"], plan["port"]))
        ports[plan["port"]] = spec["name"]
        result.append({"name": spec["name"], "gpus": spec["gpus"], "port": plan["port"], "plan": plan,
                       "gpu_label": _gpu_label(facts),
                       "container": _container(spec["name"], plan, model, model_sha, secrets_dir, gpu_requests, ulimits),
                       "probe": {"name": spec["name"], "port": plan["port"], "engine": plan["engine"]}})
    return result


def _gpu_label(facts):
    gpus = facts.get("gpus") or []
    return "%dx %s" % (len(gpus), gpus[0].get("name", "GPU")) if gpus else "no GPU"


def _container(name, plan, model, model_sha, secrets_dir, gpu_requests, ulimits):
    volumes = ["%s:%s:ro" % (model["host_path"], model["path"])]
    secret = (plan.get("secrets") or {}).get("api_key") or {}
    if secret.get("file"):
        # One root-only file per host, shared by its instances (same engine, same key).
        volumes.append("%s/%s:%s:ro" % (secrets_dir, secret["file"].rsplit("/", 1)[-1], secret["file"]))
    return {
        "name": name,
        "image": plan["image"],
        "entrypoint": plan["entrypoint"],
        "command": plan["args"],
        "env": plan["env"],
        "ports": ["%s:%s" % (plan["port"], plan["port"])],
        "volumes": volumes,
        "ipc_mode": plan["container"].get("ipc_mode"),
        "shm_size": plan["container"].get("shm_size"),
        "ulimits": _ulimits(plan, ulimits),
        "device_requests": plan["container"]["device_requests"] if gpu_requests else None,
        "labels": {
            "gpufleet.plan_hash": plan["plan_hash"],
            "gpufleet.engine": plan["engine"],
            "gpufleet.engine_version": plan["engine_version"],
            "gpufleet.model": model.get("repo_id") or model["path"],
            "gpufleet.model_sha": model_sha or "",
            # What playbooks/benchmark.yml needs to find the server without the plan.
            "gpufleet.port": str(plan["port"]),
            "gpufleet.served_model_name": str(model.get("served_name") or model.get("repo_id") or model["path"]),
        },
    }


def _name(container):
    """Name of a container from `docker inspect` (Name) or the container list (Names)."""
    return (container.get("Name") or (container.get("Names") or [""])[0]).lstrip("/")


def _running(container):
    state = container.get("State")
    return state.get("Running") if isinstance(state, dict) else state == "running"


def _release(container):
    """The part of a container (`docker inspect` or container-list shape) the rollout report shows."""
    if not container:
        return None
    config = container.get("Config") or {}
    labels = config.get("Labels") or container.get("Labels") or {}
    return {"id": (container.get("Id") or "")[:12], "image": config.get("Image") or container.get("Image"),
            "labels": {k: v for k, v in labels.items() if k.startswith("gpufleet.")}}


def rollback_plan(containers, names, replaced):
    """Which engine containers to keep, renamed <name>-previous and stopped, before the new ones start.

    `containers`: the host's engine containers (docker_host_info, verbose); `names`: the instances'
    names; `replaced`: the instances this run replaces. Containers no instance is named after any more
    are `retired`: stopped with the replaced ones (they hold GPUs and ports), removed once the new ones
    are healthy, restored with them on failure. Only running containers are kept, and never over a
    <name>-previous an interrupted run left (that one stays the rollback target).
    """
    by_name = {_name(c): c for c in containers}
    retired = [n for n in by_name if n not in names and not n.endswith(PREVIOUS_SUFFIX)]
    keep = [n for n in list(replaced) + retired
            if n in by_name and _running(by_name[n]) and n + PREVIOUS_SUFFIX not in by_name]
    return {"keep": keep, "retired": retired}


def rollout_record(before, after, names, replaced, restored=(), failure=None, healthy=None):
    """The engine_rollout fact of a host: per instance the container before and after this run.

    `before`, `after`: the host's engine containers (`docker inspect` or container-list shape, None
    entries ignored); `names`: instances (and retired containers) to report; `replaced`: those this run
    replaced or retired; `restored`: those put back on their previous container. With `failure` (why
    the deployment failed) the record has a `cause` that also says what the host runs now; `healthy`
    is its health after that.
    """
    before_by = {_name(c): c for c in before or [] if c}
    after_by = {_name(c): c for c in after or [] if c}
    instances = [{"name": n, "before": _release(before_by.get(n)), "after": _release(after_by.get(n)),
                  "replaced": n in replaced} for n in names]
    cause = None
    if failure is not None:
        if restored:
            outcome = "rolled back to the previous container (%s)" % ", ".join(
                "%s: %s" % (i["name"], i["after"]["image"]) for i in instances if i["name"] in restored and i["after"])
        elif replaced:
            outcome = "no previous container to go back to; the new one was removed"
        else:
            outcome = "nothing was changed"
        health = {True: "healthy", False: "NOT healthy"}.get(healthy, "health unknown")
        cause = "%s; %s, now %s" % (failure.strip().rstrip("."), outcome, health)
    return {"instances": instances, "rolled_back": bool(restored), "cause": cause}
