#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: engine_inflight
short_description: Count the requests an SGLang or vLLM server still holds, and wait until it holds none
version_added: 1.0.0
description:
  - Reads the engine's own gauges on C(/metrics) (SGLang C(sglang:num_running_reqs) + C(sglang:num_queue_reqs),
    vLLM C(vllm:num_requests_running) + C(vllm:num_requests_waiting)).
  - With O(wait_idle=true), polls until the count is zero or O(timeout) seconds pass. This is the second
    half of draining a worker. Once its gateway sends it nothing new, the requests it holds end by themselves.
  - An engine that does not answer holds nothing that can still finish; that is reported, not an error.
  - When the wait runs out, the task does not fail; RV(idle) is V(false) and RV(inflight) says how many
    requests the replacement will cut.
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Only reads, in check mode too.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description: Only reads; C(changed) is always V(false).
options:
  url:
    description: Base URL of the engine.
    type: str
    default: http://127.0.0.1:30000
  engine:
    description: Which engine serves O(url); decides which gauges count.
    type: str
    choices: [sglang, vllm]
    required: true
  wait_idle:
    description: Wait until the engine holds no request.
    type: bool
    default: false
  timeout:
    description: Seconds O(wait_idle) waits at most.
    type: float
    default: 300
  interval:
    description: Seconds between reads.
    type: float
    default: 0.5
  request_timeout:
    description: Seconds one read of C(/metrics) may take.
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: Wait (at most 5 minutes) until the drained engine has finished its requests
  gpufleet.serving.engine_inflight:
    url: http://127.0.0.1:30000
    engine: sglang
    wait_idle: true
    timeout: 300
"""

RETURN = r"""
inflight:
  description: Requests running or queued at the last read; V(null) when the engine did not answer or exports no such gauge.
  returned: always
  type: int
  sample: 0
inflight_before:
  description: Requests running or queued at the first read.
  returned: always
  type: int
  sample: 3
idle:
  description: Whether the engine held no request (or did not answer) at the last read.
  returned: always
  type: bool
waited_s:
  description: Seconds spent waiting.
  returned: always
  type: float
answer:
  description: What the last read saw, for example C(no answer (connection refused)).
  returned: always
  type: str
"""

import time
from http.client import HTTPException

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http


def read(url, engine, timeout):
    """(count or None, description)."""
    try:
        count = engine_http.inflight(url, engine, timeout)
    except engine_http.EngineHttpError as exc:
        return None, str(exc)
    except (OSError, HTTPException) as exc:
        return None, "no answer (%s)" % getattr(exc, "reason", exc)
    return count, "%s request(s) running or queued" % count if count is not None else "no in-flight gauge on /metrics"


def watch(params, clock=time.monotonic, sleep=time.sleep):
    start = clock()
    count, answer = read(params["url"], params["engine"], params["request_timeout"])
    result = {"changed": False, "inflight_before": count, "inflight": count, "answer": answer, "waited_s": 0.0}
    while params["wait_idle"] and count and clock() - start < params["timeout"]:
        sleep(min(params["interval"], max(0.0, params["timeout"] - (clock() - start))))
        count, answer = read(params["url"], params["engine"], params["request_timeout"])
    result.update(inflight=count, answer=answer, idle=not count, waited_s=round(clock() - start, 1))
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:30000"),
            engine=dict(type="str", required=True, choices=list(engine_http.ENGINES)),
            wait_idle=dict(type="bool", default=False),
            timeout=dict(type="float", default=300),
            interval=dict(type="float", default=0.5),
            request_timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )
    module.exit_json(**watch(module.params))


if __name__ == "__main__":
    main()
