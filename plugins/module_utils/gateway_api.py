# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Talk to the SGLang model gateway's (smg) worker API: list, add, drain and wait for workers.

What the calls mean (smg 1.13.0, model_gateway/src/server.rs and worker/service.rs, checked by running
the pinned router in tests/unit/test_gateway_api.py):

* ``GET /workers`` lists every worker with its ``status``: ``pending`` while registration probes it,
  ``ready`` when it takes requests, ``draining``, ``not_ready``/``failed`` after failed health checks.
* ``POST /workers {url, api_key}`` queues a registration (202). The router probes ``/health``, finds the
  engine (SGLang or vLLM) and its served model, then marks the worker ``ready``. A worker that does not
  answer is retried for a while and then dropped: register engines that are up.
* ``DELETE /workers/{id}`` is smg's drain: the worker turns ``draining`` (no new request is routed to
  it), stays so for the router's drain settle time (5 s), then leaves the registry. Requests already
  sent to it run to the end on their own connections.
* Every worker-API call needs the gateway's admin key when the gateway has one (``--api-key``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import time

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.parse import urlsplit
from ansible_collections.gpufleet.serving.plugins.module_utils.http_open import open_url

READY = "ready"
DRAINING = "draining"


class GatewayError(Exception):
    """The router did not answer, or answered with an error; ``str()`` names the router and the call.

    ``status`` is the HTTP status when the router answered one, else None."""

    def __init__(self, message, status=None):
        super(GatewayError, self).__init__(message)
        self.status = status


def address_of(url):
    """The host part of a worker URL (what the inventory calls ansible_host)."""
    return urlsplit(url).hostname or ""


class Router(object):
    """The worker API of one router; every call is bounded by ``timeout`` seconds."""

    def __init__(self, url, api_key=None, timeout=10.0, opener=open_url):
        self.url, self.api_key, self.timeout, self._open = url.rstrip("/"), api_key, float(timeout), opener

    def _call(self, method, path, payload=None):
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        data = None
        if payload is not None:
            data = json.dumps(payload)
            headers["Content-Type"] = "application/json"
        where = "%s %s%s" % (method, self.url, path)
        try:
            resp = self._open(self.url + path, method=method, data=data, headers=headers, timeout=self.timeout,
                              validate_certs=True)
            body = resp.read()
        except HTTPError as exc:
            raise GatewayError("%s answered HTTP %s: %s%s" % (where, exc.code, exc.read()[:300].decode("utf-8", "replace"),
                                                              " (check gateway_api_key)" if exc.code in (401, 403) else ""),
                               status=exc.code)
        except (URLError, socket.timeout, OSError) as exc:
            raise GatewayError("%s: no answer within %.0f s (%s)" % (where, self.timeout, getattr(exc, "reason", exc)))
        try:
            return json.loads(body) if body else {}
        except ValueError:  # /health answers plain text
            return {"text": body.decode("utf-8", "replace")}

    def health(self):
        """True when the router's own /health answers 200 (it does with no worker too)."""
        self._call("GET", "/health")
        return True

    def workers(self):
        """[{id, url, status, healthy, model}] of every registered worker."""
        listed = self._call("GET", "/workers").get("workers") or []
        return [{"id": w.get("id"), "url": w.get("url"), "status": w.get("status"), "healthy": bool(w.get("is_healthy")),
                 "model": w.get("model_id")} for w in listed]

    def add(self, url, api_key=None):
        """Queue a registration. True when this call queued it, False when the router already had one
        under way for the URL (smg answers 409 WORKER_CREATE_IN_PROGRESS while an earlier registration -
        a run cut short, a worker that was down - still probes it; the outcome is the same)."""
        payload = {"url": url}
        if api_key:
            payload["api_key"] = api_key
        try:
            self._call("POST", "/workers", payload)
        except GatewayError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def remove(self, worker_id):
        return self._call("DELETE", "/workers/%s" % worker_id)


def by_url(workers):
    return dict((w["url"], w) for w in workers)


def sync_plan(current, wanted, keep_addresses=()):
    """What makes the router's list the wanted one: (urls to add, workers to remove).

    A registered worker whose address is in ``keep_addresses`` stays even when it is not wanted: it belongs
    to a host this run knows nothing about (unreachable, failed preflight), which may well be serving."""
    registered = by_url(current)
    add = [url for url in wanted if url not in registered]
    remove = [w for w in current if w["url"] not in wanted and address_of(w["url"]) not in set(keep_addresses)]
    return add, remove


def matching(workers, urls=(), addresses=()):
    """The workers with one of the URLs, or on one of the addresses."""
    return [w for w in workers if w["url"] in set(urls) or address_of(w["url"]) in set(addresses)]


def wait_for(router, done, timeout, interval=1.0, clock=time.monotonic, sleep=time.sleep):
    """Poll the worker list until ``done(workers)`` is true or ``timeout`` seconds pass.

    Returns (met, workers, seconds waited)."""
    start = clock()
    while True:
        workers = router.workers()
        waited = clock() - start
        if done(workers):
            return True, workers, waited
        if waited >= timeout:
            return False, workers, waited
        sleep(max(0.0, min(interval, timeout - waited)))
