#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: engine_benchmark
short_description: Load an SGLang or vLLM server at rising concurrency and measure TTFT, tokens/s and requests/s
version_added: 0.1.0
description:
  - For each level of O(concurrency), keeps that many streamed chat completions in flight (stdlib
    threads) until O(requests) were sent or O(level_timeout) passed, then reports time to first token,
    output tokens per second, requests per second and latency percentiles.
  - Bounded in request count and time; each prompt gets a request number so no two are identical.
  - Run it on the engine's host against C(127.0.0.1), so the network between the controller and the
    host is not measured.
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: none
    description: Sends real requests; skipped in check mode.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description: Changes nothing on the server; C(changed) is always V(false).
options:
  url:
    description: Base URL of the server, without a path.
    type: str
    default: http://127.0.0.1:30000
  model:
    description: Model name of the requests (a name C(/v1/models) lists).
    type: str
    required: true
  api_key:
    description: The server's API key, sent as a C(Bearer) token.
    type: str
  concurrency:
    description: Concurrent requests of each level, run in this order.
    type: list
    elements: int
    default: [1, 5, 10, 20]
  requests:
    description: Requests per level; a level sends at least its concurrency.
    type: int
    default: 20
  max_tokens:
    description: C(max_tokens) of each request.
    type: int
    default: 32
  prompt:
    description: User message of each request (the request number is appended).
    type: str
    default: Write one short sentence about GPUs.
  request_timeout:
    description: Seconds one request may take.
    type: float
    default: 60
  level_timeout:
    description: Seconds one level may take; requests not started by then are not sent (RV(levels[].not_sent)).
    type: float
    default: 300
"""

EXAMPLES = r"""
- name: Measure the engine on this host
  gpufleet.serving.engine_benchmark:
    url: http://127.0.0.1:30000
    model: qwen3-8b
    api_key: "{{ engine_api_key }}"
    concurrency: [1, 5, 10, 20]
    requests: 40
  register: bench
"""

RETURN = r"""
levels:
  description: One entry per concurrency level.
  returned: success
  type: list
  elements: dict
  contains:
    concurrency: {description: Concurrent requests., type: int}
    requests: {description: Requests sent., type: int}
    ok: {description: Requests that streamed to the end., type: int}
    errors: {description: Requests that failed., type: int}
    not_sent: {description: Requests not sent because the level ran out of time., type: int}
    duration_s: {description: Seconds from the first request to the last answer., type: float}
    requests_per_s: {description: Successful requests per second., type: float}
    tokens_per_s: {description: Output tokens per second over all requests of the level., type: float}
    ttft_ms_mean: {description: Mean time to first token., type: float}
    ttft_ms_p50: {description: Median time to first token., type: float}
    ttft_ms_p90: {description: 90th percentile of the time to first token., type: float}
    ttft_ms_p99: {description: 99th percentile of the time to first token., type: float}
    latency_ms_p50: {description: Median request latency., type: float}
    latency_ms_p90: {description: 90th percentile of the request latency., type: float}
    first_error:
      description: The first error of the level (API keys masked), or null.
      type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.serving.plugins.module_utils import loadgen


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:30000"),
            model=dict(type="str", required=True),
            api_key=dict(type="str", no_log=True),
            concurrency=dict(type="list", elements="int", default=[1, 5, 10, 20]),
            requests=dict(type="int", default=20),
            max_tokens=dict(type="int", default=32, no_log=False),  # a token count, not a secret
            prompt=dict(type="str", default="Write one short sentence about GPUs."),
            request_timeout=dict(type="float", default=60),
            level_timeout=dict(type="float", default=300),
        ),
        supports_check_mode=False,
    )
    p = module.params
    if not p["concurrency"] or min(p["concurrency"]) < 1 or p["requests"] < 1:
        module.fail_json(msg="concurrency levels and requests must be positive integers")
    levels = loadgen.run(p["url"], p["model"], p["concurrency"], p["requests"], p["max_tokens"], p["prompt"],
                         api_key=p["api_key"], request_timeout=p["request_timeout"], level_timeout=p["level_timeout"])
    failed = [level for level in levels if not level["ok"]]
    if failed:
        module.fail_json(msg="no request succeeded at concurrency %s: %s"
                         % (failed[0]["concurrency"], failed[0]["first_error"]), levels=levels)
    module.exit_json(changed=False, levels=levels)


if __name__ == "__main__":
    main()
