#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: converge_stamp
short_description: Tell in one call whether a host is still as its last successful run left it
version_added: 0.2.0
description:
  - O(state=check) reads the host's GPU facts (as M(gpufleet.serving.gpu_facts) does) and compares
    the host against the stamp its last successful run wrote - the digest of that run's inputs, the
    GPU facts, the fingerprints of the files, model snapshots and engine containers it made - and
    asks each engine's health endpoint. The answer, with the reasons when the host differs, is the
    C(gpufleet_converge) fact; site.yml sends only hosts that differ through the roles.
  - O(state=present) records the stamp after a host was proven healthy. The stamp is root-only
    (mode 0600) - it holds no secret, but it describes the host.
  - Model snapshots are fingerprinted by file names, sizes and modification times (no content is
    read); files by sha256; containers by id, image, running state and restart count.
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: O(state=check) only reads; O(state=present) writes nothing.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description:
      - Never reports a change. The stamp is the collection's bookkeeping, like the fact cache, not state of the
        host; RV(stamp_written) tells whether it was written.
  facts:
    support: full
    description: O(state=check) returns C(gpufleet_gpu), C(gpufleet_converge) and, for a converged host, the facts the stamp kept.
options:
  state:
    description:
      - V(check) compares the host against its stamp; V(present) writes the stamp.
    type: str
    choices: [check, present]
    default: check
  digest:
    description:
      - Digest of every input of the run (see the C(fleet_inputs) action); a stamp with another
        digest means the host must be converged again.
    type: str
    required: true
  path:
    description: Where the stamp lives on the host.
    type: path
    default: /var/lib/gpufleet/converged.json
  enabled:
    description:
      - With V(false), O(state=check) reports every host as not converged (the full run), still
        returning the GPU facts.
    type: bool
    default: true
  max_age:
    description:
      - Seconds after which a stamp no longer counts and the host takes the full run anyway, so
        drift that no fingerprint covers is still found. V(0) never expires.
    type: int
    default: 86400
  gpu_required:
    description: Fail when the GPU state is anything but V(healthy), as O(gpufleet.serving.gpu_facts#module:required) does.
    type: bool
    default: false
  nvidia_smi_path:
    description: Path of C(nvidia-smi); searched on E(PATH) when unset.
    type: path
  timeout:
    description: Seconds each C(nvidia-smi) call and each health request may take.
    type: int
    default: 30
  record:
    description:
      - For O(state=present) - what to fingerprint and keep.
      - C(files) - paths hashed with sha256; C(trees) - directories fingerprinted by names, sizes and
        modification times; C(containers) - engine container names; C(health) - engine base URLs whose C(/health) is asked on
        each check; C(gpu) - the GPU facts of the run; C(facts) - facts returned by later checks of a
        converged host (for reports).
    type: dict
"""

EXAMPLES = r"""
- name: Is the host still as the last run left it?
  gpufleet.serving.converge_stamp:
    digest: "{{ gpufleet_inputs_digest }}"
  register: converge

- name: Record the host after it was proven healthy
  gpufleet.serving.converge_stamp:
    state: present
    digest: "{{ converge.digest }}"
    record:
      gpu: "{{ gpufleet_gpu }}"
      files: [/etc/docker/daemon.json]
      trees: ["{{ gpufleet_model.dir }}"]
      containers: [gpufleet-engine]
      health: ["http://127.0.0.1:30000"]
      facts: {}
"""

RETURN = r"""
converged:
  description: The host matches its stamp and its engines are healthy (O(state=check)).
  returned: always
  type: bool
reasons:
  description: Why the host does not count as converged; empty when it does.
  returned: always
  type: list
  elements: str
  sample: ["container gpufleet-engine is not running"]
stamp_written:
  description: O(state=present) wrote the stamp (always, outside check mode - its time is new).
  returned: when state is present
  type: bool
state_changed:
  description: O(state=present) recorded another state than the stamp held (inputs, GPUs or fingerprints differ).
  returned: when state is present
  type: bool
digest:
  description: The digest the host was compared with (O(state=check)); the stamp to record at the end of the run takes it.
  returned: when state is check
  type: str
ansible_facts:
  description: Facts for the rest of the run (O(state=check)).
  returned: when state is check
  type: dict
  contains:
    gpufleet_gpu:
      description: The GPU facts, as M(gpufleet.serving.gpu_facts) returns them.
      type: dict
    gpufleet_converge:
      description: C(converged), C(reasons), C(digest) and the stamp's age C(age_s) (V(null) without stamp).
      type: dict
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.module_utils import atomic_file
from ansible_collections.gpufleet.serving.plugins.module_utils import converge_stamp as stamps
from ansible_collections.gpufleet.serving.plugins.module_utils.docker_socket import container_fingerprints
from ansible_collections.gpufleet.serving.plugins.module_utils.engine_http import probe_health
from ansible_collections.gpufleet.serving.plugins.module_utils.gpu_probe import (
    ARGUMENT_SPEC,
    fail_unless_healthy,
    read_gpu_facts,
)

# Facts a converged host gets back from its stamp; a host that is not converged gets them reset,
# so nothing from an earlier run (or the fact cache) passes for this run's result.
KEPT_FACTS = ("gpufleet_model", "model_fetch_result", "engine_plan", "engine_deployments", "engine_health_result",
              "engine_rollout", "dcgm_exporter_deployed")


def read_stamp(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError):
        return None
    except ValueError:
        return {"schema": "unreadable"}


def write_stamp(path, stamp):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    atomic_file.write_json(path, stamp, mode=0o600)


def health_probe(timeout):
    def probe(base_url):
        # The engine name only changes how a 503 is worded; either way it is not healthy.
        verdict, description = probe_health(base_url, "sglang", timeout=timeout)
        return verdict == "ready", description
    return probe


def check(module, now):
    params = module.params
    gpu = read_gpu_facts(module, params["nvidia_smi_path"], params["timeout"])
    if params["gpu_required"]:
        fail_unless_healthy(module, gpu)
    stamp = read_stamp(params["path"])
    if not params["enabled"]:
        reasons = ["fast path off (preflight_fast_path=false)"]
    else:
        reasons = stamps.stamp_reasons(stamp, params["digest"], gpu, now, params["max_age"])
        if not reasons:  # only a stamp that still fits is worth the probes
            spec = stamp["spec"]
            live = stamps.fingerprints(spec, read_containers=container_fingerprints)
            reasons = stamps.live_reasons(stamp, live) or stamps.health_reasons(
                spec.get("health") or [], health_probe(params["timeout"]))
    converged = not reasons
    kept = (stamp.get("facts") or {}) if converged else {}
    facts = dict((name, kept.get(name)) for name in KEPT_FACTS)
    age = now - stamp["recorded_at"] if isinstance(stamp, dict) and stamp.get("recorded_at") else None
    facts.update(gpufleet_gpu=gpu, gpufleet_converge={"converged": converged, "reasons": reasons,
                                                      "digest": params["digest"], "age_s": age})
    module.exit_json(changed=False, converged=converged, reasons=reasons, digest=params["digest"], ansible_facts=facts)


def present(module, now):
    params = module.params
    record = params["record"] or {}
    live = stamps.fingerprints(record, read_containers=container_fingerprints)
    new = stamps.build(params["digest"], record.get("gpu"), record, live, record.get("facts") or {}, now)
    old = read_stamp(params["path"])
    # The stamp is the collection's own bookkeeping, like the fact cache: writing it is no change to
    # the host, so a run that changed nothing else (after a collection upgrade, say) reports none.
    # Its time is new on every record, so it is always rewritten (outside check mode).
    if not module.check_mode:
        write_stamp(params["path"], new)
    module.exit_json(changed=False, converged=True, reasons=[], stamp_written=not module.check_mode,
                     state_changed=not stamps.same_state(old, new))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ARGUMENT_SPEC,
            state=dict(type="str", choices=["check", "present"], default="check"),
            digest=dict(type="str", required=True),
            path=dict(type="path", default="/var/lib/gpufleet/converged.json"),
            enabled=dict(type="bool", default=True),
            max_age=dict(type="int", default=86400),
            gpu_required=dict(type="bool", default=False),
            record=dict(type="dict"),
        ),
        required_if=[("state", "present", ["record"])],
        supports_check_mode=True,
    )
    (present if module.params["state"] == "present" else check)(module, int(time.time()))


if __name__ == "__main__":
    main()
