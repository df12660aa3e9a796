"""Filters that look across the hosts of a play; they run once, on the controller.

Documentation: the sidecar files fleet_models.yml, model_key.yml and fleet_summary.yml.
"""


def model_key(repo_id, revision, endpoint):
    """One string naming a model reference, so hosts can find the fleet-wide resolution of theirs."""
    return "|".join(str(part) for part in (repo_id, revision or "main", endpoint or ""))


def fleet_models(hostvars, hosts):
    seen = {}
    for host in hosts:
        hv = hostvars[host]
        repo_id = hv.get("model_fetch_repo_id")
        if not repo_id:
            continue
        revision = hv.get("model_fetch_revision") or "main"
        endpoint = hv.get("model_fetch_hf_endpoint") or None
        key = model_key(repo_id, revision, endpoint)
        seen.setdefault(key, {"key": key, "repo_id": repo_id, "revision": revision,
                              "endpoint": endpoint, "host": host})
    return list(seen.values())


def _gpu_label(gpu):
    gpus = gpu.get("gpus") or []
    if not gpus:
        return gpu.get("state", "unknown")
    return f"{len(gpus)}x {gpus[0]['name']}"


def fleet_summary(hostvars, hosts):
    """Rows of host | GPU | engine | model@sha | health | time to healthy, as aligned text lines."""
    rows = [("host", "gpu", "engine", "model", "revision", "health", "ready_s", "ttft_ms", "tok/s")]
    for host in hosts:
        hv = hostvars[host]
        plan = hv.get("engine_plan") or {}
        health = hv.get("engine_health_result") or {}
        fetched = hv.get("model_fetch_result") or {}
        rows.append((
            host,
            _gpu_label(hv.get("gpufleet_gpu") or {}),
            f"{plan.get('engine', '-')} {plan.get('engine_version', '')}".strip(),
            hv.get("model_fetch_repo_id") or "-",
            (fetched.get("commit_sha") or "-")[:12],
            "healthy" if health.get("healthy") else ("FAILED" if health else "not reached"),
            _fmt(health.get("time_to_healthy_s")),
            _fmt(health.get("ttft_ms")),
            _fmt(health.get("tokens_per_s")),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _fmt(value):
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


class FilterModule:
    def filters(self):
        return {"fleet_models": fleet_models, "model_key": model_key, "fleet_summary": fleet_summary}
