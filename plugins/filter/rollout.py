# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""The rollout's pacing checks (module_utils/rollout_pacing.py, rollout_max_fail_errors) and its batch gate
(rollout_gate).

Documentation in the sidecar files of the same names."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpufleet.serving.plugins.module_utils.rollout_pacing import pacing_errors


def rollout_pacing_errors(canary_hosts, batch_size, max_fail_percentage):
    return pacing_errors(canary_hosts, batch_size, max_fail_percentage)


def _percent(part, whole):
    return 100.0 * len(part) / len(whole) if whole else 0.0


def rollout_gate(hostvars, hosts_all, hosts_active, batch, max_fail_percentage, refused=None):
    """Whether the rollout stops before its next batch, and what the report says about it.

    The rollout play never lets a host fail (Ansible would end the whole playbook when a batch fails, and
    the closing plays - gateway worker lists, report, Prometheus targets, run locks - would not run):
    a failed host is rolled back and recorded (engine_rollout.cause), an unreachable one recorded by the
    batch's probe (engine_reach). This gate then decides, once per batch:

    - `hostvars`, `hosts_all` (ansible_play_hosts_all of the rollout play), `hosts_active`
      (ansible_play_hosts: hosts Ansible did not remove), `batch` (the batch's hosts as it started);
    - lost: hosts whose rollout failed, hosts found unreachable, hosts Ansible removed (unreachable mid-task,
      failed before the rollout);
    - stop when hosts are left to roll out and either this batch lost more than `max_fail_percentage` of its
      hosts (what Ansible's max_fail_percentage did, unreachable hosts counted too) or the fleet lost more
      than that share of the play's hosts; or always with `refused` (the gateway guard's errors: the batch
      would leave a model without enough ready workers, or a router does not answer).

    Returns {stop, failed, unreachable, lost, not_rolled_out, message}; `not_rolled_out` are the hosts the
    rollout has not reached (later batches; with `refused`, this batch too), which a stop leaves as they are.
    """
    hosts_all = list(hosts_all or [])
    active = set(hosts_active or [])
    failed = [h for h in hosts_all if (hostvars[h].get("engine_rollout") or {}).get("cause")]
    unreachable = [h for h in hosts_all if h not in failed and
                   (h not in active or (hostvars[h].get("engine_reach") or {}).get("unreachable"))]
    lost = [h for h in hosts_all if h in failed or h in unreachable]
    reached = [h for h in hosts_all if hostvars[h].get("engine_reach") is not None]
    not_rolled_out = [h for h in hosts_all if h not in reached and h not in lost]
    batch_lost = [h for h in batch or [] if h in lost]
    limit = float(max_fail_percentage)
    gate = {"stop": False, "failed": failed, "unreachable": unreachable, "lost": lost,
            "not_rolled_out": not_rolled_out, "message": ""}
    if not not_rolled_out:
        return gate
    left = "Not rolled out, left as they are: %s." % ", ".join(not_rolled_out)
    if refused:
        gate.update(stop=True, message="Rollout stopped before batch %s: %s %s" % (
            ", ".join(batch or []), "; ".join(refused), left))
    elif _percent(batch_lost, batch) > limit or _percent(lost, hosts_all) > limit:
        parts = ["%s failed" % ", ".join(failed)] if failed else []
        parts += ["%s unreachable" % ", ".join(unreachable)] if unreachable else []
        gate.update(stop=True, message=(
            "Rollout stopped after batch %s: %s (%d of %d hosts lost, %d of %d in this batch), more than "
            "rollout_max_fail_percentage=%s%%. %s" % (
                ", ".join(batch or []), " and ".join(parts), len(lost), len(hosts_all), len(batch_lost),
                len(batch or []), max_fail_percentage, left)))
    return gate


def rollout_max_fail_errors(hostvars, hosts):
    """Why the hosts' rollout_max_fail_percentage cannot run: a bad value, or values that differ between hosts.

    The batch gate reads the variable once per batch, on the batch's first host: a value set per host or
    per group would apply or not depending on which host comes first. So it is one value for the rollout,
    from -e or from variables every host of the rollout shares; [] when it is."""
    by_value = {}
    for h in hosts or []:
        value = hostvars[h].get("rollout_max_fail_percentage", 0)
        by_value.setdefault(str(value).strip(), (value, []))[1].append(h)
    errors = []
    for value, named in by_value.values():
        errors += ["%s (%s)" % (e.rsplit(". Fix:", 1)[0], ", ".join(named))
                   for e in pacing_errors(1, "25%", value) if e.startswith("rollout_max_fail_percentage")]
    if errors:
        return ["%s. Fix: -e with a valid value (docs/rollout.md)" % e for e in errors]
    if len(by_value) > 1:
        return ["rollout_max_fail_percentage differs between the hosts of the rollout (%s): the batch gate applies "
                "one value to the whole rollout. Fix: set it once for the run (-e, or the variables of a group that "
                "holds every GPU host) (docs/rollout.md)" % "; ".join(
                    "%s on %s" % (value, ", ".join(named)) for value, named in by_value.values())]
    return []


class FilterModule:
    def filters(self):
        return {"rollout_pacing_errors": rollout_pacing_errors, "rollout_gate": rollout_gate,
                "rollout_max_fail_errors": rollout_max_fail_errors}
