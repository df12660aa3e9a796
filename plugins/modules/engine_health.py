#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: engine_health
short_description: Wait until an SGLang or vLLM server is really serving, and measure it
version_added: 0.1.0
description:
  - Waits for the inference server at O(url) to become ready the way its engine means it, checks
    that C(/v1/models) lists the expected model names, then streams one short chat completion and
    measures time to first token and decode speed.
  - "Readiness: both engines load the model before their HTTP server listens, so a refused
    connection means still loading. SGLang answers C(/health) with 503 while it warms up, then 200.
    vLLM answers C(/health) with 200, or with 503 only when its engine died, which ends the wait at once."
  - With O(container_name), the container is inspected on every probe. When it has exited (or its
    restart policy is restarting it after a crash) the wait stops at once, the message ends with the
    engine's last log line, and any failure reports the container state, exit code and last log lines
    (API keys masked) instead of a bare timeout.
  - Never changes anything on the host or the server.
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Runs the same read-only probes in check mode.
  diff_mode:
    support: none
    description: Returns no diff; nothing changes.
  idempotent:
    support: full
    description: Only reads; C(changed) is always V(false).
options:
  url:
    description: Base URL of the server, without a path.
    type: str
    default: http://127.0.0.1:30000
  engine:
    description: Which engine serves O(url); decides what a 503 from C(/health) means and where the version is read.
    type: str
    choices: [sglang, vllm]
    required: true
  served_model_name:
    description:
      - The name the server must list in C(/v1/models); the smoke request uses it.
      - When unset, the smoke request uses the first listed model.
    type: str
  expect_models:
    description: Further names C(/v1/models) must list (for example every alias given to C(--served-model-name)).
    type: list
    elements: str
    default: []
  api_key:
    description:
      - The server's API key, sent as a C(Bearer) token in the C(Authorization) header.
      - Health probes never send it; both engines serve C(/health) without a key.
    type: str
  timeout:
    description: Seconds to wait for readiness (model loading can take many minutes).
    type: float
    default: 600
  interval:
    description: Seconds between readiness probes.
    type: float
    default: 5
  smoke_prompt:
    description:
      - User message of the streamed smoke chat completion.
      - An empty string skips the smoke request; RV(ttft_ms) and RV(tokens_per_s) are then V(null).
    type: str
    default: Reply with one short sentence.
  max_tokens:
    description: C(max_tokens) of the smoke request.
    type: int
    default: 32
  image_check:
    description:
      - Also send one chat completion with an image (a 32x32 PNG as a base64 data URL in an C(image_url) part),
        for a vision-language model; the gate fails when the engine refuses it or answers with no token.
    type: bool
    default: false
  endpoints:
    description:
      - The engine version's readiness, version and load endpoints, as the launch plan carries them (C(engine_plan.http),
        from the knowledge table's C(engines.<engine>.<version>.http)) - C(health), C(health_503) (V(waiting) or
        V(dead)), C(version) (C(path), C(key)), C(inflight_metrics).
      - Unset - those of the newest version of O(engine) in the table.
    type: dict
  container_name:
    description:
      - Name of the engine's container on the managed host, used to stop waiting when it exited and
        to diagnose a failure (C(docker inspect), C(docker logs --tail 30)).
      - Needs the C(docker) CLI on the managed host.
    type: str
notes:
  - The smoke request is a real generation. Point O(url) at one server, not at a load balancer, to
    measure that server.
"""

EXAMPLES = r"""
- name: Wait for SGLang and measure it
  gpufleet.serving.engine_health:
    url: http://127.0.0.1:30000
    engine: sglang
    served_model_name: qwen3-8b
    api_key: "{{ engine_api_key }}"
    container_name: gpufleet-engine
    timeout: 900
  register: health

- name: Wait for vLLM serving two aliases, readiness only
  gpufleet.serving.engine_health:
    url: http://10.0.0.12:8000
    engine: vllm
    served_model_name: qwen3-8b
    expect_models: [qwen3]
    smoke_prompt: ""

- name: Show the numbers
  ansible.builtin.debug:
    msg: "healthy after {{ health.time_to_healthy_s }}s, TTFT {{ health.ttft_ms }} ms, {{ health.tokens_per_s }} tok/s"
"""

RETURN = r"""
healthy:
  description: Whether the server became ready, listed the expected models and answered the smoke request.
  returned: always
  type: bool
  sample: true
time_to_healthy_s:
  description: Seconds from the start of the task until C(/health) answered 200.
  returned: always
  type: float
  sample: 41.3
ttft_ms:
  description: Milliseconds from sending the smoke request to its first streamed token.
  returned: always
  type: float
  sample: 38.2
tokens_per_s:
  description: Decode speed of the smoke request after its first token, (tokens - 1) / (last - first token time).
  returned: always
  type: float
  sample: 97.5
image_tokens:
  description: Completion tokens of the image request (O(image_check)); V(null) without it.
  returned: always
  type: int
  sample: 8
models:
  description: Model ids listed by C(/v1/models).
  returned: always
  type: list
  elements: str
  sample: [qwen3-8b]
engine_version:
  description: Version the server reports (SGLang C(/server_info) C(version), vLLM C(/version)); V(null) if unknown.
  returned: always
  type: str
  sample: 0.5.23
diagnosis:
  description: On failure, what was seen; V(null) on success.
  returned: always
  type: dict
  contains:
    last_probe:
      description: The last readiness probe, for example C(GET /health -> no answer (connection refused)).
      type: str
    container:
      description:
        - C(docker inspect) state of O(container_name) (status, running, exit_code, oom_killed, error,
          restart_count, started_at, finished_at), or an error.
      type: dict
    last_log_lines:
      description: Last 30 lines of C(docker logs) of O(container_name), API keys masked.
      type: list
      elements: str
"""

import json
from http.client import HTTPException

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http

LOG_LINES = 30
# "restarting": the engine exited and the restart policy is between attempts; with the policy a
# crashing engine may never be seen as exited, so waiting for it would last the whole timeout.
STOPPED_STATUSES = ("exited", "dead", "restarting")


class DockerCli(object):
    """The few docker CLI reads the diagnosis needs; `run(argv) -> (rc, stdout, stderr)`."""

    def __init__(self, run, docker_bin, name):
        self.run, self.docker_bin, self.name = run, docker_bin, name

    def state(self):
        if not self.docker_bin:
            return {"error": "docker CLI not found on the managed host"}
        rc, out, err = self.run([self.docker_bin, "inspect", "--format", "{{json .State}}", self.name])
        if rc != 0:
            return {"error": (err or out).strip()}
        state = json.loads(out)
        return {"status": state.get("Status"), "running": state.get("Running"), "exit_code": state.get("ExitCode"),
                "oom_killed": state.get("OOMKilled"), "error": state.get("Error") or None,
                "restart_count": state.get("RestartCount"), "started_at": state.get("StartedAt"),
                "finished_at": state.get("FinishedAt")}

    def log_tail(self):
        if not self.docker_bin:
            return []
        rc, out, err = self.run([self.docker_bin, "logs", "--tail", str(LOG_LINES), self.name])
        # The engines log to both streams; docker logs keeps them apart, so order is approximate.
        return (out + err).splitlines()[-LOG_LINES:] if rc == 0 else [err.strip()]


def _stopped(docker):
    """Reason to stop waiting now, or None: the container is gone or has exited."""
    state = docker.state()
    if state.get("status") in STOPPED_STATUSES:
        return "container %s is %s (exit code %s)" % (docker.name, state["status"], state.get("exit_code"))
    if "status" not in state and "No such" in (state.get("error") or ""):
        return "container %s does not exist" % docker.name
    return None


def probe(params, docker=None):
    """Run the checks; returns (ok, result dict, failure message or None)."""
    url, engine, key = params["url"], params["engine"], params["api_key"]
    result = {"healthy": False, "time_to_healthy_s": None, "ttft_ms": None, "tokens_per_s": None,
              "models": [], "engine_version": None, "image_tokens": None, "diagnosis": None}

    def fail(msg, last_probe=None, with_log=False):
        diagnosis = {"url": url, "last_probe": last_probe}
        if docker:
            diagnosis["container"] = docker.state()
            diagnosis["last_log_lines"] = [engine_http.redact(line, [key]) for line in docker.log_tail()]
            # A stopped engine says why in its last words (argparse error, missing module, CUDA error).
            last = [line.strip() for line in diagnosis["last_log_lines"] if line.strip()]
            if with_log and last:
                msg = "%s; last log line: %s" % (msg, last[-1])
        result["diagnosis"] = diagnosis
        return False, result, engine_http.redact(msg, [key])

    endpoints = params.get("endpoints")
    ready, elapsed, last_probe, stop = engine_http.wait_ready(
        url, engine, params["timeout"], params["interval"], stop_check=(lambda: _stopped(docker)) if docker else None,
        endpoints=endpoints)
    if not ready:
        if stop:
            return fail("%s stopped waiting after %.1fs: %s" % (engine, elapsed, stop), last_probe, with_log=True)
        return fail("%s at %s was not ready after %.1fs; last probe: %s" % (engine, url, elapsed, last_probe),
                    last_probe)
    result["time_to_healthy_s"] = round(elapsed, 1)

    try:
        result["models"] = engine_http.list_models(url, key)
        wanted = ([params["served_model_name"]] if params["served_model_name"] else []) + params["expect_models"]
        missing = [name for name in wanted if name not in result["models"]]
        if missing:
            return fail("/v1/models does not list %s; the server lists %s" % (missing, result["models"]), last_probe)
        result["engine_version"] = engine_http.engine_version(url, engine, key, endpoints=endpoints)
        if params["smoke_prompt"]:
            model = params["served_model_name"] or (result["models"] or [None])[0]
            smoke = engine_http.smoke_chat(url, model, params["smoke_prompt"], params["max_tokens"], key)
            if not smoke["completion_tokens"]:
                return fail("the smoke chat completion streamed no tokens", last_probe)
            result["ttft_ms"], result["tokens_per_s"] = smoke["ttft_ms"], smoke["tokens_per_s"]
        if params.get("image_check"):
            model = params["served_model_name"] or (result["models"] or [None])[0]
            result["image_tokens"] = engine_http.image_chat(url, model, params["max_tokens"], key)
            if not result["image_tokens"]:
                return fail("the image chat completion returned no tokens", last_probe)
    except engine_http.EngineHttpError as exc:
        hint = " (check api_key)" if exc.status in (401, 403) else ""
        return fail("%s%s" % (exc, hint), last_probe)
    except (OSError, HTTPException, ValueError) as exc:  # it went away or answered garbage after it was ready
        return fail("%s stopped answering after it was ready: %s" % (engine, exc), last_probe)
    result["healthy"] = True
    return True, result, None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:30000"),
            engine=dict(type="str", required=True, choices=list(engine_http.ENGINES)),
            served_model_name=dict(type="str"),
            expect_models=dict(type="list", elements="str", default=[]),
            api_key=dict(type="str", no_log=True),
            timeout=dict(type="float", default=600),
            interval=dict(type="float", default=5),
            smoke_prompt=dict(type="str", default="Reply with one short sentence."),
            max_tokens=dict(type="int", default=32, no_log=False),  # a token count, not a secret
            container_name=dict(type="str"),
            image_check=dict(type="bool", default=False),
            endpoints=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    docker = None
    if module.params["container_name"]:
        docker = DockerCli(module.run_command, module.get_bin_path("docker"), module.params["container_name"])
    ok, result, msg = probe(module.params, docker)
    if ok:
        module.exit_json(changed=False, **result)
    module.fail_json(msg=msg, changed=False, **result)


if __name__ == "__main__":
    main()
