#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

# Documentation only: the work is done by the action plugin of the same name, on the controller.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: fleet_inputs
short_description: Check every host's inventory against the roles' argument specs, and digest the inputs
version_added: 0.2.0
description:
  - For every host of the play, checks the values of every variable that the C(main) entry point of each role in
    O(roles) and O(validate_only) declares in its C(meta/argument_specs.yml), the way a role checks its own inputs
    when it starts - but for the whole fleet in one task, before any role starts on any host.
  - Any invalid value on any host fails the task with one message per host and role naming the host, the
    variable, what is allowed and where to fix it.
  - So does a misspelled name, with one message per host - a variable from the inventory (host and group vars,
    vars files beside it) or the extra vars whose name starts like the collection's (a role's name such as
    C(engine_) or C(model_fetch_), or C(rollout_), C(benchmark_), C(gpufleet_)) but that no argument spec of any
    of the collection's roles declares. The message names the host, the variable and the closest declared
    name, for example C(engine_overides) and C(engine_overrides).
  - Facts (the fact cache's too), set_fact and register results are the run's own and are not looked at; a
    variable of the user's own with such a name is allowed by listing it in the host's
    C(preflight_allowed_variables).
  - Returns RV(digests) - per host, a sha256 over the values of every variable any entry point of O(roles) declares
    and over the collection's own files (roles, plugins, data, playbooks, site.yml). A host whose digest is the one
    of its last successful run has the same inputs (see M(gpufleet.serving.converge_stamp)).
  - Run it with C(run_once) - it covers the hosts of the play itself.
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  action:
    support: full
    description: Runs on the controller only; no host is contacted.
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description: Reads only; never reports a change.
options:
  roles:
    description: Roles of this collection whose inputs are checked and digested.
    type: list
    elements: str
    required: true
  validate_only:
    description: Roles whose inputs are checked but do not count in the digest (switches of the run itself).
    type: list
    elements: str
    default: []
  hosts:
    description: Hosts to cover; the play's hosts (C(ansible_play_hosts)) when unset.
    type: list
    elements: str
notes:
  - Secret values (an API key, a Hub token) count through the digest only; no value is returned.
"""

EXAMPLES = r"""
- name: Inventory values are valid for every host and role (one check for the fleet)
  gpufleet.serving.fleet_inputs:
    roles: [nvidia_driver, container_toolkit, model_fetch, engine]
    validate_only: [preflight]
  run_once: true
  register: inputs
"""

RETURN = r"""
digests:
  description: Per host, the sha256 of its inputs and of the collection's content.
  returned: success
  type: dict
  sample: {"hopper-1": "5f0c..."}
"""
