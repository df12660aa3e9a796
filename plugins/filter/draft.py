# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Filter engine_draft (documentation in the sidecar engine_draft.yml)."""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.module_utils.engine_draft import DRAFT_MOUNT, draft_keys
from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import PlanError


def engine_draft(snapshots, name=None, host=None, algorithm=None, mount=None, model_mount=None):
    """The engine_plan model keys of the draft model `name` of gpufleet_model; {} without a name."""
    try:
        return draft_keys(snapshots, name, host or "this host", algorithm, mount or DRAFT_MOUNT, model_mount)
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self):
        return {"engine_draft": engine_draft}
