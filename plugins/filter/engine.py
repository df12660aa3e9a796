# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""Filters engine_plan, launch_args and model_fit (documentation in the sidecar .yml files)."""
from __future__ import annotations

import copy

from ansible.errors import AnsibleFilterError

from ansible_collections.gpufleet.serving.plugins.plugin_utils.engine_plan import PlanError, build_plan, image_ref
from ansible_collections.gpufleet.serving.plugins.plugin_utils.knowledge import KnowledgeError, load_knowledge


def engine_plan(gpu_facts, engine=None, model=None, preset="balanced", overrides=None, engine_version=None,
                host=None, image=None, api_key=False, knowledge_path=None):
    """The launch plan (docs/CONTRACTS.md); any planning error becomes one AnsibleFilterError."""
    try:
        knowledge = load_knowledge(knowledge_path) if knowledge_path else None
        return build_plan(gpu_facts, engine, model, preset=preset, overrides=overrides,
                          engine_version=engine_version, knowledge=knowledge, host=host, image=image,
                          api_key=api_key)
    except (PlanError, KnowledgeError) as exc:
        raise AnsibleFilterError(str(exc)) from exc


def launch_args(gpu_facts, **kwargs):
    """Only the command line (entrypoint + arguments) of engine_plan."""
    return engine_plan(gpu_facts, **kwargs)["argv"]


def model_fit(gpu_facts, **kwargs):
    """Only the fit section of engine_plan: weights per GPU, KV bytes per token, chosen context."""
    return engine_plan(gpu_facts, **kwargs)["fit"]


def engine_image_ref(engine, engine_version=None, image=None, gpu_facts=None):
    """The image the engine's plan will run, known before the model is. With the host's GPU facts it
    is the version the plan picks for that GPU; without usable ones, the table's default_versions entry."""
    try:
        return image_ref(engine, engine_version, image, gpu_facts=gpu_facts)
    except (PlanError, KnowledgeError) as exc:
        raise AnsibleFilterError(str(exc)) from exc


def engine_endpoints(engine, engine_version=None):
    """The health, version and in-flight endpoints of one engine version, as a launch plan carries them
    (``http``). For a container planned by an earlier run (a rollback target): its labels name its version,
    whose endpoints may differ from the current one's. None when the version is not in the table (a
    container from before versions were labelled): the module then uses the engine's newest."""
    versions = load_knowledge()["engines"].get(engine) or {}
    entry = versions.get(engine_version) if engine_version else None
    return copy.deepcopy(entry["http"]) if entry else None


class FilterModule:
    def filters(self):
        return {"engine_plan": engine_plan, "launch_args": launch_args, "model_fit": model_fit,
                "engine_image_ref": engine_image_ref, "engine_endpoints": engine_endpoints}
