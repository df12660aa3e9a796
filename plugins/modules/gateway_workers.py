#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: gateway_workers
short_description: Keep the worker list of an SGLang model gateway (smg) router, drain and rejoin workers
version_added: 1.0.0
description:
  - Talks to the worker API of the smg router at O(url) (usually C(127.0.0.1) on the gateway host).
  - O(state=present) makes the router's list exactly O(workers) (registered workers on O(keep_addresses)
    stay), then waits until every listed worker is C(ready).
  - O(state=drained) drains every worker of O(workers) or on O(addresses) and waits until the router has
    let go of it. smg turns a drained worker C(draining), so that no new request reaches it, while requests
    in flight run to their end.
  - O(state=joined) registers the O(workers) that are not registered and waits until they are C(ready).
  - O(state=query) waits until the router answers and returns its workers.
  - Every call to the router is bounded by O(request_timeout); waits by O(timeout). A router that does not
    answer fails the task with the router's address and the timeout.
author:
  - gpufleet maintainers (@gpufleet)
attributes:
  check_mode:
    support: full
    description: Reads the worker list and reports what would change; registers and drains nothing.
  diff_mode:
    support: none
    description: Returns no diff.
  idempotent:
    support: full
    description: A worker already registered (or already gone) is left alone; C(changed) says whether a call changed the list.
options:
  url:
    description: Base URL of the router.
    type: str
    default: http://127.0.0.1:30080
  api_key:
    description: The gateway's key, sent as a C(Bearer) token to its worker API.
    type: str
  worker_api_key:
    description: Key the router sends to the workers it registers (their engines' C(--api-key)).
    type: str
  state:
    description: What to make of the listed workers.
    type: str
    choices: [present, drained, joined, query]
    default: query
  workers:
    description: Worker base URLs, for example C(http://10.0.0.11:30000).
    type: list
    elements: str
    default: []
  addresses:
    description: With O(state=drained), also drain every worker whose URL has one of these host addresses.
    type: list
    elements: str
    default: []
  keep_addresses:
    description: With O(state=present), registered workers on these host addresses are never removed.
    type: list
    elements: str
    default: []
  timeout:
    description: Seconds to wait for workers to become C(ready) (or to be let go of, when draining).
    type: float
    default: 120
  request_timeout:
    description: Seconds one call to the router may take.
    type: float
    default: 10
  interval:
    description: Seconds between polls of the worker list.
    type: float
    default: 1
"""

EXAMPLES = r"""
- name: Take the host's workers out of rotation before its engine is replaced
  gpufleet.serving.gateway_workers:
    url: http://127.0.0.1:30080
    api_key: "{{ gateway_api_key }}"
    state: drained
    addresses: ["{{ ansible_host }}"]
  delegate_to: gateway-1

- name: The router serves exactly these workers
  gpufleet.serving.gateway_workers:
    api_key: "{{ gateway_api_key }}"
    worker_api_key: "{{ gateway_api_key }}"
    state: present
    workers: [http://10.0.0.11:30000, http://10.0.0.12:8000]
"""

RETURN = r"""
workers:
  description: The router's workers after the task.
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: The router's worker id., type: str}
    url: {description: Base URL of the worker., type: str}
    status:
      description: "C(pending), C(ready), C(draining), C(not_ready) or C(failed)."
      type: str
    healthy: {description: Whether the router's last health check passed., type: bool}
    model: {description: Model the router found the worker serving., type: str}
added:
  description: URLs registered by this task.
  returned: always
  type: list
  elements: str
removed:
  description: URLs drained and let go of by this task.
  returned: always
  type: list
  elements: str
waited_s:
  description: Seconds spent waiting for the router.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_api


def _ready(urls):
    return lambda workers: all(gateway_api.by_url(workers).get(u, {}).get("status") == gateway_api.READY for u in urls)


def _ready_requeueing(router, urls, worker_api_key):
    """_ready, and a wanted URL the router no longer lists at all is queued again: a registration the
    router gave up on (the engine was still loading) must not leave the worker out for good."""
    def done(workers):
        listed = gateway_api.by_url(workers)
        for url in urls:
            if url not in listed:
                router.add(url, worker_api_key)
        return _ready(urls)(workers)
    return done


def _gone(urls):
    return lambda workers: not set(urls) & set(gateway_api.by_url(workers))


def _not_ready_message(workers, urls):
    seen = gateway_api.by_url(workers)
    return ", ".join("%s is %s" % (u, seen[u]["status"] if u in seen else "not registered (it did not answer the router)")
                     for u in urls if seen.get(u, {}).get("status") != gateway_api.READY)


def converge(params, router, check_mode=False, wait=gateway_api.wait_for):
    """Returns (result dict, failure message or None)."""
    state, timeout, interval = params["state"], params["timeout"], params["interval"]
    current = router.workers()
    result = {"changed": False, "workers": current, "added": [], "removed": [], "waited_s": 0.0}
    if state == "query":
        return result, None

    if state == "drained":
        add, remove = [], gateway_api.matching(current, params["workers"], params["addresses"])
    elif state == "joined":
        add, remove = [u for u in params["workers"] if u not in gateway_api.by_url(current)], []
    else:
        add, remove = gateway_api.sync_plan(current, params["workers"], params["keep_addresses"])
    result.update(changed=bool(add or remove), added=add, removed=[w["url"] for w in remove])
    if check_mode:
        return result, None

    for worker in remove:
        if worker["status"] != gateway_api.DRAINING:  # a second drain call would 404 once it is gone
            router.remove(worker["id"])
    for url in add:
        router.add(url, params["worker_api_key"])

    gone, ready = [w["url"] for w in remove], ([] if state == "drained" else params["workers"])
    ready_now = _ready_requeueing(router, ready, params["worker_api_key"])
    met, workers, waited = wait(router, lambda ws: _gone(gone)(ws) and ready_now(ws), timeout, interval)
    result.update(workers=workers, waited_s=round(waited, 1))
    if met:
        return result, None
    if not _gone(gone)(workers):
        return result, "%s still lists %s after %.0f s of draining" % (router.url, ", ".join(gone), waited)
    return result, "%s: workers not ready after %.0f s: %s" % (router.url, waited, _not_ready_message(workers, ready))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:30080"),
            api_key=dict(type="str", no_log=True),
            worker_api_key=dict(type="str", no_log=True),
            state=dict(type="str", default="query", choices=["present", "drained", "joined", "query"]),
            workers=dict(type="list", elements="str", default=[]),
            addresses=dict(type="list", elements="str", default=[]),
            keep_addresses=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float", default=120),
            request_timeout=dict(type="float", default=10),
            interval=dict(type="float", default=1),
        ),
        supports_check_mode=True,
    )
    params = module.params
    router = gateway_api.Router(params["url"], params["api_key"], params["request_timeout"])
    try:
        result, failure = converge(params, router, module.check_mode)
    except gateway_api.GatewayError as exc:
        module.fail_json(msg="gateway: %s" % exc, workers=[], added=[], removed=[], waited_s=0.0)
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
