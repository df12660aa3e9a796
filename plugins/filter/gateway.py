# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Which engines sit behind which gateway, and whether a rollout batch leaves each model served
(documentation in the sidecar .yml files; the fleet contract is in docs/CONTRACTS.md)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.plugin_utils import engine_deploy
from ansible_collections.gpufleet.serving.plugins.module_utils.gateway_api import READY, address_of


def _served_name(hv):
    return hv.get("engine_served_model_name")


def _address(hv, host):
    return hv.get("ansible_host") or host


def gateways_of(hostvars, gateways, served_model_name):
    """The gateway hosts whose router fronts this model."""
    return [g for g in gateways or [] if hostvars[g].get("gateway_model") == served_model_name]


def gateway_backends(hostvars, gpu_hosts, model):
    """The engines behind the router of `model`: {hosts, workers, keep_addresses}.

    `workers` are the URLs of every engine instance this run knows (the engine_deployments fact, set by the
    rollout or restored from the converge stamp on the fast path) and proved healthy; a host whose rollout
    failed serves from what its rollback left running (their labels' ports and model, not the failed plan's);
    `keep_addresses` are the addresses of the model's hosts this run knows nothing about (unreachable, failed
    before the engine role): their workers are left as the router has them."""
    hosts, workers, keep = [], [], []
    for host in gpu_hosts or []:
        hv = hostvars[host]
        if _served_name(hv) != model:
            continue
        hosts.append(host)
        deployments = hv.get("engine_deployments") or []
        healthy = (hv.get("engine_health_result") or {}).get("healthy")
        rollout = hv.get("engine_rollout") or {}
        if rollout.get("cause"):
            serving = engine_deploy.serving_after_failure(rollout)
            if serving is None or not healthy:
                keep.append(_address(hv, host))
                continue
            # A restored container of an older release may serve another model name: not this router's worker.
            deployments = [s for s in serving if s["served_model_name"] in (None, model)]
        if deployments and healthy:
            workers += ["http://%s:%s" % (_address(hv, host), d["port"]) for d in deployments]
        elif not rollout.get("cause"):
            keep.append(_address(hv, host))
    return {"hosts": hosts, "workers": workers, "keep_addresses": keep}


def gateway_input_errors(hostvars, gateways, gpu_hosts):
    """What is wrong with the gateways of the inventory, one message per problem (empty: nothing).

    smg forwards the client's Authorization header to the worker it picks (router.rs: user auth wins over the
    worker's own key), so an engine behind a gateway must accept the gateway's key."""
    errors = []
    for gw in gateways or []:
        gv = hostvars[gw]
        model = gv.get("gateway_model")
        hosts = [h for h in gpu_hosts or [] if _served_name(hostvars[h]) == model]
        if not hosts:
            served = sorted(set(str(_served_name(hostvars[h])) for h in gpu_hosts or []))
            errors.append("%s: gateway_model=%s is served by no host of gpu_hosts (served: %s): set gateway_model "
                          "to one of those names" % (gw, model, ", ".join(served) or "none"))
            continue
        key = gv.get("gateway_api_key")
        wrong = [h for h in hosts if (hostvars[h].get("engine_api_key") or None) != (key or None)]
        if wrong:
            errors.append("%s: the engines of %s on %s do not take the gateway's key; smg forwards the client's "
                          "key to the engines, so set engine_api_key of those hosts to gateway_api_key"
                          % (gw, model, ", ".join(wrong)))
    return errors


def gateway_capacity_errors(query_results, batch_addresses, hostvars):
    """One message per gateway whose model would keep fewer ready worker hosts than its
    gateway_min_healthy_workers (default 1) if the batch's hosts (`batch_addresses`) were drained.
    `query_results`: registered loop results of gateway_workers(state=query), each with `item` (the
    gateway host) and `workers`.

    A model with no ready worker at all (a fleet being built) has nothing to protect and passes."""
    errors = []
    batch = set(batch_addresses or [])
    for res in query_results or []:
        minimum = int(hostvars[res["item"]].get("gateway_min_healthy_workers", 1))
        ready = set(address_of(w["url"]) for w in res.get("workers") or [] if w.get("status") == READY)
        left = ready - batch
        if ready and len(left) < minimum:
            fits = len(ready) - minimum
            fix = ("a batch of at most %d host(s) of the model would work: -e rollout_batch_size=%d" % (fits, fits)
                   if fits > 0 else "no batch size would: add workers or lower gateway_min_healthy_workers")
            errors.append("%s: this batch (%d host(s) of the model) would leave %d of %d ready worker host(s), "
                          "fewer than gateway_min_healthy_workers=%d; %s"
                          % (res.get("item"), len(ready & batch), len(left), len(ready), minimum, fix))
    return errors


def gateways_unanswered(hostvars, gateways):
    """The gateways with no gateway_state: this run's gateway play did not reach them or their router."""
    return [g for g in gateways or [] if not (hostvars[g].get("gateway_state") or {}).get("healthy")]


def _health(state):
    if not state:
        return "not in this run"  # --limit left the gateway host out: nothing was asked of it
    return "healthy" if state.get("healthy") else "NOT ANSWERING"


def gateway_summary(hostvars, gateways):
    """One line per gateway: endpoint, model, workers ready / wanted, workers out, health."""
    rows = [("gateway", "endpoint", "model", "policy", "workers in", "workers out", "health")]
    for gw in gateways or []:
        gv = hostvars[gw]
        state = gv.get("gateway_state") or {}
        wanted = state.get("wanted") or []
        seen = dict((w["url"], w) for w in state.get("workers") or [])
        ready = [u for u in seen if seen[u].get("status") == READY]
        out = ["%s (%s)" % (u, seen[u]["status"] if u in seen else "not registered") for u in wanted if u not in ready]
        kept = [u for u in ready if u not in wanted]  # workers of hosts this run did not reach
        rows.append((gw, state.get("url") or "-", state.get("model") or gv.get("gateway_model") or "-",
                     state.get("policy") or "-",
                     "%d/%d%s" % (len(ready) - len(kept), len(wanted), " +%d kept" % len(kept) if kept else ""),
                     ", ".join(out) or "-",
                     _health(state)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def gateway_file_sd(hostvars, gateways, previous=None):
    """Prometheus file_sd target groups of the gateways' metrics endpoints.

    A gateway this run did not reach (a --limit run) or whose router did not answer keeps the target
    ``previous`` (the file's current JSON text) lists for it: a partial run or a router that is down never
    drops it from monitoring (a target that is down is what alerts)."""
    try:
        old = json.loads(previous) if previous else []
    except ValueError:
        old = []
    groups = []
    for gw in gateways or []:
        state = hostvars[gw].get("gateway_state") or {}
        if state.get("metrics"):
            groups.append({"targets": [state["metrics"]], "labels": {"host": gw, "model": state.get("model") or "",
                                                                     "container": state.get("container") or "",
                                                                     "exporter": "gateway"}})
        else:  # not reached, or not answering: Prometheus keeps watching the last known target
            groups.extend(g for g in old if isinstance(g, dict)
                          and (g.get("labels") or {}).get("host") == gw
                          and g["labels"].get("exporter") == "gateway")
    return groups


def _checked(func):
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnsibleFilterError("%s: %s" % (func.__name__, exc))
    wrapper.__name__ = func.__name__
    return wrapper


class FilterModule:
    def filters(self):
        return dict((f.__name__, _checked(f)) for f in (gateways_of, gateway_backends, gateway_input_errors,
                                                        gateway_capacity_errors, gateways_unanswered, gateway_summary,
                                                        gateway_file_sd))
