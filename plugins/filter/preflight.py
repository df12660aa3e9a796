# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see LICENSE)
"""Filters resolved_models and engine_plan_errors: preflight plans every host before any host changes.

Documentation: the sidecar files resolved_models.yml and engine_plan_errors.yml.
"""
from __future__ import annotations

from ansible_collections.gpufleet.serving.plugins.plugin_utils import engine_deploy
from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import KnowledgeError


def resolved_models(results):
    """{model key: {config, weights_bytes}} from the registered results of preflight's resolve loop;
    models whose config.json could not be read (gated without a token) are left out."""
    return dict((r["item"]["key"], {"config": r["config"], "weights_bytes": r.get("weights_bytes")})
                for r in results or [] if r.get("config"))


def engine_plan_errors(gpu_facts, instances=None, **kwargs):
    """[] when every instance of the host plans, else [the planner's message]: it names the host, the
    variable and the fix. The same call as the engine role's engine_instances, which plans again later
    from the fetched snapshot."""
    try:
        engine_deploy.deployments(gpu_facts, instances, **kwargs)
    except (PlanError, KnowledgeError) as exc:
        return [str(exc)]
    return []


class FilterModule:
    def filters(self):
        return {"resolved_models": resolved_models, "engine_plan_errors": engine_plan_errors}
