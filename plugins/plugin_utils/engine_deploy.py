# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Several engines on one host, one per GPU set: `engine_instances` -> one launch plan and one
container spec each (roles/engine). Pure Python; the planner is plugins/plugin_utils/engine_plan.

No `engine_instances` means one instance on every GPU, named `engine_container_name`, with
`engine_overrides`: exactly the single-engine behaviour.

MIG (docs/planning.md "MIG"): on a GPU in MIG mode each MIG device is one engine, named by
`engine_instances[].mig` (its index in `gpufleet_gpu.mig_devices`, or its MIG-... UUID), planned on the
device's memory with tensor parallel 1 and given the device's UUID as its only GPU.
"""
from __future__ import annotations

import copy
import os
import re

from ansible_collections.gpufleet.serving.plugins.module_utils.engine_draft import draft_volume
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import (
    PlanError, build_plan, plan_hash, resolved_version)
from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import load_knowledge, version_tuple

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


def mig_view(facts, device):
    """The gpufleet_gpu facts as a container given only this MIG device sees them: one GPU with the
    device's memory (CUDA reports the instance's memory, not the parent's), carrying `mig_device`."""
    parent = next(g for g in facts["gpus"] if g.get("index") == device["gpu"])
    gpu = dict(copy.deepcopy(parent), uuid=device["uuid"], name=device["name"], memory_mib=device["memory_mib"],
               mig_device=copy.deepcopy(device))
    view = dict((k, copy.deepcopy(v)) for k, v in facts.items() if not k.startswith("mig_"))
    view.update({"gpus": [gpu], "count": 1, "memory_total_mib": device["memory_mib"],
                 "memory_min_mib": device["memory_mib"], "homogeneous": True, "nvlink": False,
                 "compute_capability": parent["compute_capability"]})
    return view


def _mig_gpus(facts):
    return [g.get("index") for g in facts.get("gpus") or [] if g.get("mig_mode") == "Enabled"]


def _devices_of(facts, gpu):
    return [d for d in facts.get("mig_devices") or [] if d["gpu"] == gpu]


def _describe(device):
    return "%d (GPU %s %s, %s)" % (device["index"], device["gpu"], device["profile"], device["uuid"])


def _create_fix(facts, gpu):
    """How to give a MIG-enabled GPU without MIG devices some, from what `mig -lgi` showed."""
    instances = [i for i in facts.get("mig_gpu_instances") or [] if i["gpu"] == gpu]
    if instances:
        return ("GPU %s has GPU instances (GI %s) without compute instances: create them with nvidia-smi mig -i %s "
                "-gi %s -cci" % (gpu, ", ".join(str(i["gi"]) for i in instances), gpu,
                                 ",".join(str(i["gi"]) for i in instances)))
    return ("GPU %s has MIG enabled but no MIG devices: create instances with nvidia-smi mig -i %s -cgi "
            "<profile>[,<profile>...] -C (profiles: nvidia-smi mig -i %s -lgip), or disable MIG "
            "(nvidia-smi -i %s -mig 0, then reset the GPU)" % (gpu, gpu, gpu, gpu))


def _mig_inventory(facts):
    devices = facts.get("mig_devices") or []
    if devices:
        return "the host has MIG devices %s" % ", ".join(_describe(d) for d in devices)
    return "; ".join(_create_fix(facts, g) for g in _mig_gpus(facts))


def _mig_device(ref, facts, where):
    """The MIG device `mig: ref` names: its index in gpufleet_gpu.mig_devices or its MIG-... UUID."""
    devices = facts.get("mig_devices") or []
    text = str(ref).strip()
    found = [d for d in devices if (d["uuid"] == text if text.startswith("MIG-") else str(d["index"]) == text)]
    if isinstance(ref, bool) or not found:
        raise PlanError("%s: mig %r is no MIG device of this host; %s" % (where, ref, _mig_inventory(facts)))
    return found[0]


def _default_mig(facts, default_name, host):
    """No engine_instances on a MIG host: its only MIG device, or a refusal saying what to set."""
    mig = _mig_gpus(facts)
    whole = [g.get("index") for g in facts["gpus"] if g.get("index") not in mig]
    if whole:
        raise PlanError("%s: GPUs %s are in MIG mode and GPUs %s are not, and one engine cannot use both: set "
                        "engine_instances, one per MIG device (mig: <n>) and one for GPUs %s (gpus: [...])"
                        % (host, ", ".join(map(str, mig)), ", ".join(map(str, whole)), ", ".join(map(str, whole))))
    empty = [g for g in mig if not _devices_of(facts, g)]
    if empty:
        raise PlanError("%s: %s" % (host, "; ".join(_create_fix(facts, g) for g in empty)))
    devices = facts["mig_devices"]
    if len(devices) > 1:
        raise PlanError("%s: the host has %d MIG devices (%s) and one engine cannot span them: set engine_instances "
                        "to one per MIG device, e.g. [%s]" % (
                            host, len(devices), ", ".join(_describe(d) for d in devices),
                            ", ".join("{name: %s-mig%d, mig: %d, port: <its own>}" % (default_name, d["index"], d["index"])
                                      for d in devices)))
    return [{"name": default_name, "gpus": None, "port": None, "overrides": {}, "mig": devices[0]}]


def resolve(instances, default_name, gpu_facts, host="this host"):
    """Validated instance specs: [{name, gpus (indices or None = all), port (or None), overrides}],
    plus `mig` (the gpufleet_gpu.mig_devices entry) for an instance on a MIG device."""
    facts = gpu_facts or {}
    mig_gpus = _mig_gpus(facts)
    if not instances or (len(instances) == 1 and isinstance(instances[0], dict)
                         and instances[0].get("gpus") is None and instances[0].get("mig") is None):
        if mig_gpus:  # one engine on "every GPU" cannot run on a MIG host
            default = _default_mig(facts, default_name, host)
            if instances:
                default[0].update(name=str(instances[0].get("name") or default_name), port=instances[0].get("port"),
                                  overrides=dict(instances[0].get("overrides") or {}))
            return default
    if not instances:
        return [{"name": default_name, "gpus": None, "port": None, "overrides": {}}]
    known = [g.get("index") for g in facts.get("gpus") or []]
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
        device = None
        if spec.get("mig") is not None:
            if gpus is not None:
                raise PlanError("%s (%s): give gpus or mig, not both (a MIG device is a part of one GPU)" % (where, name))
            device = _mig_device(spec["mig"], facts, "%s (%s)" % (where, name))
            if device["uuid"] in taken:
                raise PlanError("%s (%s): MIG device %s is already given to instance %s"
                                % (where, name, _describe(device), taken[device["uuid"]]))
            taken[device["uuid"]] = name
        elif gpus is None and len(instances) > 1:
            raise PlanError("%s (%s): give its GPU indices (gpus: [...]) or its MIG device (mig: <n>); several "
                            "instances cannot all use every GPU" % (where, name))
        if gpus is not None:
            gpus = [int(g) for g in gpus]
            missing = [g for g in gpus if g not in known]
            if not gpus or missing:
                raise PlanError("%s (%s): GPU indices %s do not exist; the host has GPUs %s"
                                % (where, name, missing or "[]", ", ".join(map(str, known))))
            in_mig = [g for g in gpus if g in mig_gpus]
            if in_mig:
                fixes = ["GPU %s: mig: %s" % (g, ", ".join(str(d["index"]) for d in _devices_of(facts, g)))
                         if _devices_of(facts, g) else _create_fix(facts, g) for g in in_mig]
                raise PlanError("%s (%s): GPU %s is in MIG mode, so a container cannot use the whole GPU%s: give this "
                                "instance one MIG device instead (%s), one instance per MIG device, or disable MIG"
                                % (where, name, ", ".join(map(str, in_mig)),
                                   " nor mix it with GPUs outside MIG" if len(in_mig) < len(gpus) else "",
                                   "; ".join(fixes)))
            for g in gpus:
                if g in taken:
                    raise PlanError("%s (%s): GPU %d is already given to instance %s" % (where, name, g, taken[g]))
                taken[g] = name
        entry = {"name": name, "gpus": gpus, "port": spec.get("port"), "overrides": dict(spec.get("overrides") or {})}
        if device is not None:
            entry["mig"] = device
        result.append(entry)
    return result


def _tp_pinned(overrides, plan_kwargs):
    """(flag, size) when an override pins tensor parallelism above 1, in any spelling the engine's flag
    dump accepts for the table's TP flag; None otherwise (or when the engine is unknown: the planner says so)."""
    kn = plan_kwargs.get("knowledge") or load_knowledge()
    engine = plan_kwargs.get("engine")
    try:
        # the version the plan will pick for this GPU (pinned, else the newest that runs on it)
        ev = kn["engines"][engine][resolved_version(engine, plan_kwargs.get("engine_version"),
                                                    plan_kwargs.get("gpu_facts"), kn)]
        entries = flag_dump.load_dump(os.path.join(kn.get("flag_dump_dir") or flag_dump.default_dump_dir(),
                                                   ev["flag_dump"]))
    except (KeyError, TypeError, OSError, ValueError):
        return None
    names = next((set(e["flags"]) for e in entries if ev["flags"]["tp"] in e["flags"]), {ev["flags"]["tp"]})
    for key, value in (overrides or {}).items():
        flag = key if str(key).startswith("-") else "--" + str(key)
        if flag in names and str(value).strip().isdigit() and int(value) > 1:
            return flag, int(value)
    return None


def _refuse_mig_tp(spec, merged, plan_kwargs, host, indexed):
    pinned = _tp_pinned(merged, plan_kwargs)
    if pinned:
        variable = ("engine_overrides or engine_instances[%d].overrides" % indexed if indexed is not None
                    else "engine_overrides")
        raise PlanError(
            "%s (instance %s): %s %s on MIG device %s: a MIG device is one GPU to CUDA and MIG devices have no "
            "peer-to-peer (P2P No for every profile of nvidia-smi mig -lgip), so tensor parallel must be 1: remove %s "
            "from %s, or serve this model from GPUs with MIG disabled"
            % (host, spec["name"], pinned[0], pinned[1], _describe(spec["mig"]), pinned[0], variable))


def _pin_mig(plan, device):
    """The MIG device's UUID is the container's only GPU (docker --gpus device=MIG-...), plus the compute note."""
    plan["decisions"]["mig"] = {
        "device": device["index"], "uuid": device["uuid"], "gpu": device["gpu"], "gpu_uuid": device.get("gpu_uuid"),
        "profile": device["profile"], "gi": device["gi"], "ci": device["ci"], "memory_mib": device["memory_mib"],
        "sm_count": device.get("sm_count"), "compute_slices": device.get("compute_slices")}
    plan["warnings"].append(
        "MIG device %s: planned on its %d MiB with tensor parallel 1; its compute is %s SMs (%s compute slice(s) of "
        "GPU %s), so throughput is that share of the full GPU" % (
            _describe(device), device["memory_mib"], device.get("sm_count", "?"), device.get("compute_slices", "?"),
            device["gpu"]))
    return _pin_devices(plan, [device["uuid"]])


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
    for number, spec in enumerate(resolve(instances, name, gpu_facts, host)):
        device = spec.get("mig")
        if device:
            facts = mig_view(gpu_facts, device)
        else:
            facts = gpu_subset(gpu_facts, spec["gpus"]) if spec["gpus"] else gpu_facts
        merged = dict(overrides or {})
        merged.update(spec["overrides"])
        if spec["port"] is not None:
            merged["--port"] = spec["port"]
        if device:
            _refuse_mig_tp(spec, merged, dict(plan_kwargs, gpu_facts=facts), host, number if instances else None)
        try:
            plan = planner(facts, model=model, overrides=merged, **plan_kwargs)
        except PlanError as exc:
            raise PlanError("%s (instance %s)" % (exc, spec["name"])) if instances else exc
        if device:
            plan = _pin_mig(plan, device)
        elif spec["gpus"]:
            plan = _pin_devices(plan, spec["gpus"])
        if plan["port"] in ports:
            raise PlanError("%s: instances %s and %s both listen on port %s: give each a port"
                            % (host, ports[plan["port"]], spec["name"], plan["port"]))
        ports[plan["port"]] = spec["name"]
        entry = {"mig": device["uuid"]} if device else {}
        result.append(dict(entry, **{
            "name": spec["name"], "gpus": spec["gpus"], "port": plan["port"], "plan": plan,
            "gpu_label": _gpu_label(facts),
            "container": _container(spec["name"], plan, model, model_sha, secrets_dir, gpu_requests, ulimits),
            "probe": {"name": spec["name"], "port": plan["port"], "engine": plan["engine"],
                      # a VLM's health gate sends one image request too (engine_health image_check)
                      "vision": "vision" in plan["decisions"],
                      # the version's readiness/version endpoints (knowledge table http)
                      "http": plan["http"]}}))
    return result


def _gpu_label(facts):
    gpus = facts.get("gpus") or []
    return "%dx %s" % (len(gpus), gpus[0].get("name", "GPU")) if gpus else "no GPU"


def _container(name, plan, model, model_sha, secrets_dir, gpu_requests, ulimits):
    volumes = ["%s:%s:ro" % (model["host_path"], model["path"])]
    if draft_volume(model):  # speculative decoding: the draft snapshot, read-only, where the plan names it
        volumes.append(draft_volume(model))
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
            outcome = "no container was changed"
        cause = "%s; %s, now %s" % (failure.strip().rstrip("."), outcome, _health_words(healthy))
    return {"instances": instances, "rolled_back": bool(restored), "cause": cause}


def _health_words(healthy):
    return {True: "healthy", False: "NOT healthy"}.get(healthy, "health unknown")


def docker_config_restored(record, healthy, failure=None):
    """The engine_rollout record of a failed host once its previous Docker configuration was put back
    (engine role, docker_config_restore.yml): the cause says so, and the health is the one after Docker's
    restart. With `failure` (why putting it back failed) the cause says that instead."""
    cause = (record or {}).get("cause") or "the rollout of this host failed, now health unknown"
    done, sep, _old_health = cause.rpartition(", now ")
    done = done if sep else cause
    if failure is None:
        cause = "%s; Docker's previous configuration (daemon.json) put back and Docker restarted, now %s" % (
            done, _health_words(healthy))
    else:
        cause = "%s; putting Docker's previous configuration (daemon.json) back failed: %s, now %s" % (
            done, str(failure).strip().rstrip("."), _health_words(healthy))
    return dict(record or {"instances": [], "rolled_back": False}, cause=cause, docker_config_restored=failure is None)


def serving_after_failure(record):
    """Where a host whose rollout failed serves now: [{name, port, served_model_name}] of the containers its
    engine_rollout record (rollout_record with a failure) shows after the rollback, read from their labels:
    a restored container listens on its own release's port, not the failed plan's. None when a container
    has no such labels (the caller knows nothing better than what the router has)."""
    found = []
    for instance in (record or {}).get("instances") or []:
        labels = (instance.get("after") or {}).get("labels")
        if labels is None:
            continue  # nothing runs under this name now (a retired or removed container)
        if not labels.get("gpufleet.port"):
            return None
        found.append({"name": instance["name"], "port": int(labels["gpufleet.port"]),
                      "served_model_name": labels.get("gpufleet.served_model_name")})
    return found


def swap_repair(containers):
    """What to do first on a host an interrupted swap left with a running <name>-previous.

    A controller killed between the rename and the stop, or Docker's restart policy after a reboot,
    leaves <name>-previous running: it holds the port and GPUs, so a new <name> cannot start ("port is
    already allocated"). The running container is what serves now, so it is made the current one again:
    a <name> that is not running (a new container that never started, or crash-looping) is removed and
    <name>-previous renamed back to <name>; the rollout then treats it like any running engine (kept as
    the rollback target if the plan changed). When <name> runs too, <name>-previous goes back to being
    the stopped rollback target. A stopped <name>-previous is left as it is (rollback_plan keeps it).

    `containers`: the host's engine containers (docker_host_info). Returns {restore: names whose
    -previous becomes <name>, remove: <name>s to remove first, stop: -previous names to stop}.
    """
    by_name = {_name(c): c for c in containers or []}
    plan = {"restore": [], "remove": [], "stop": []}
    for previous, container in sorted(by_name.items()):
        if not previous.endswith(PREVIOUS_SUFFIX) or not _running(container):
            continue
        name = previous[:-len(PREVIOUS_SUFFIX)]
        if name in by_name and _running(by_name[name]):
            plan["stop"].append(previous)
            continue
        if name in by_name:
            plan["remove"].append(name)
        plan["restore"].append(name)
    return plan
