# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Action plugin: check every host's inventory values against every role's argument spec, and digest them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible_collections.gpufleet.serving.plugins.module_utils import engine_draft
from ansible_collections.gpufleet.serving.plugins.plugin_utils import role_inputs, variable_names

# A host's own names that look like the collection's but are not (variable_names): set per host or for all.
ALLOWED_VAR = "preflight_allowed_variables"


class ActionModule(ActionBase):
    """One controller-side call for the whole play (run_once): on a 2-core controller a task per host
    and role would cost more than the run's real work (docs/scale.md)."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("roles", "validate_only", "hosts"))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        task_vars = task_vars or {}
        roles = list(self._task.args.get("roles") or [])
        checked = roles + list(self._task.args.get("validate_only") or [])
        hosts = self._task.args.get("hosts") or task_vars.get("ansible_play_hosts") or []
        hostvars = task_vars["hostvars"]
        names = role_inputs.input_names(checked)
        fingerprint = role_inputs.content_fingerprint()

        digested = set(role_inputs.input_names(roles))
        # One validator per role, built once: the same specs check every host.
        validators = dict((role, (options, ArgumentSpecValidator(options))) for role, options in
                          ((r, role_inputs.role_specs(r).get("main") or {}) for r in checked))
        digests, errors, misspelled = {}, [], False
        for host in hosts:
            host_vars = hostvars[host]
            given = dict((n, host_vars[n]) for n in names if n in host_vars)
            for role, (options, validator) in validators.items():
                provided = dict((n, v) for n, v in given.items() if n in options)
                validation = validator.validate(provided, validate_role_argument_spec=True)
                if validation.error_messages:
                    errors.append(role_inputs.error_message(host, role, validation.error_messages))
            if "engine" in validators:  # the draft model must be one model_fetch fetches
                errors += engine_draft.input_errors(host, given)
            unknown = unknown_variables(hostvars, host, host_vars)
            if unknown:
                errors.append(variable_names.error_message(host, unknown))
                misspelled = True
            digests[host] = role_inputs.inputs_digest(dict((n, v) for n, v in given.items() if n in digested),
                                                      fingerprint)
        if errors:
            if misspelled:
                errors.append(variable_names.HINT)
            result.update(failed=True, msg=" ".join(errors))
            return result
        result.update(changed=False, digests=digests)
        return result


def unknown_variables(hostvars, host, host_vars):
    """A misspelled inventory name would pass silently: the role would use its default instead."""
    allowed = host_vars.get(ALLOWED_VAR) or []
    if not isinstance(allowed, list):  # the preflight spec reports the wrong type; check without it
        allowed = []
    return variable_names.unknown_names(variable_names.inventory_names(hostvars, host), allowed)
