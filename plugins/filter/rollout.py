# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""The rollout pacing check (module_utils/rollout_pacing.py; documentation in the sidecar .yml)."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpufleet.serving.plugins.module_utils.rollout_pacing import pacing_errors


def rollout_pacing_errors(canary_hosts, batch_size, max_fail_percentage):
    return pacing_errors(canary_hosts, batch_size, max_fail_percentage)


class FilterModule:
    def filters(self):
        return {"rollout_pacing_errors": rollout_pacing_errors}
