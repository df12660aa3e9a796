# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache-2.0 (see galaxy.yml)
"""The draft model of speculative decoding, from the snapshot model_fetch fetched to the plan.

model_fetch fetches the draft like any extra model (`model_fetch_extra_models: [{repo_id, name}]`) and
publishes it in `gpufleet_model.extra_models`. The engine role names it with `engine_draft_model`;
this module turns that into the planner's model keys (draft_path = the read-only mount inside the
container, draft_host_path, draft_weights_bytes, draft_algorithm), so the engine's command line names
the mounted path (SGLang --speculative-draft-model-path, vLLM --speculative-config {"model": ...}).
Pure Python; the checks run in preflight (fleet_inputs) before any host changes, and again here.
"""
from __future__ import annotations

import posixpath

from ansible_collections.gpufleet.serving.plugins.module_utils.model_fit import PlanError

DRAFT_MOUNT = "/models/draft"
DEFAULT_ALGORITHM = "EAGLE3"


def snapshot_name(spec):
    """The name model_fetch gives an extra model: its `name`, else the repo's name (filter model_snapshots)."""
    repo_id = str(spec.get("repo_id") or "")
    return spec.get("name") or repo_id.rsplit("/", 1)[-1]


def input_errors(host, values):
    """Preflight: why a host's engine_draft_* inventory values cannot work, before anything changes.
    `values` holds the host's inventory values of the roles' variables."""
    name = values.get("engine_draft_model")
    if not name:
        return []
    extras = values.get("model_fetch_extra_models") or []
    names = [snapshot_name(spec) for spec in extras if isinstance(spec, dict)]
    errors = []
    if name not in names:
        errors.append(
            "%s: engine_draft_model %r names no snapshot that model_fetch fetches (model_fetch_extra_models "
            "names: %s). Fix: add {repo_id: <org>/<draft repo>, name: %s} to model_fetch_extra_models, or set "
            "engine_draft_model to null" % (host, name, ", ".join(names) or "none", name))
    mount = values.get("engine_draft_mount") or DRAFT_MOUNT
    if _same_dir(mount, values.get("engine_model_mount") or "/models/model"):
        errors.append("%s: engine_draft_mount %s is the model's own mount (engine_model_mount): give the draft "
                      "its own directory, e.g. %s" % (host, mount, DRAFT_MOUNT))
    return errors


def _same_dir(a, b):
    return posixpath.normpath(str(a)) == posixpath.normpath(str(b))


def draft_keys(snapshots, name, host="this host", algorithm=None, mount=DRAFT_MOUNT, model_mount=None):
    """The planner's draft keys for the extra model `name` of the gpufleet_model fact `snapshots`;
    {} without a name (no speculative decoding)."""
    if not name:
        return {}
    extras = (snapshots or {}).get("extra_models") or []
    found = [e for e in extras if e.get("name") == name]
    if not found:
        raise PlanError(
            "%s: engine_draft_model %r is not among the snapshots model_fetch fetched (%s). Fix: add "
            "{repo_id: <org>/<draft repo>, name: %s} to model_fetch_extra_models, or set engine_draft_model to null"
            % (host, name, ", ".join(e.get("name", "?") for e in extras) or "no extra models", name))
    draft = found[0]
    if model_mount and _same_dir(mount, model_mount):
        raise PlanError("%s: engine_draft_mount %s is the model's own mount (engine_model_mount): give the draft "
                        "its own directory, e.g. %s" % (host, mount, DRAFT_MOUNT))
    if not draft.get("weights_bytes"):
        raise PlanError(
            "%s: the draft snapshot %s (%s) holds no weight files the engines load (*.safetensors, *.bin): "
            "check model_fetch_extra_models' allow_patterns/ignore_patterns for %s"
            % (host, draft.get("repo_id"), draft.get("dir"), name))
    return {"draft_path": mount, "draft_host_path": draft["dir"], "draft_repo_id": draft.get("repo_id"),
            "draft_weights_bytes": int(draft["weights_bytes"]),
            "draft_algorithm": str(algorithm or DEFAULT_ALGORITHM).upper()}


def draft_volume(model):
    """The read-only bind mount of the draft snapshot, or None."""
    if not model.get("draft_host_path"):
        return None
    return "%s:%s:ro" % (model["draft_host_path"], model["draft_path"])
