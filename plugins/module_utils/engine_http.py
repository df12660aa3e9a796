# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Talk to an SGLang or vLLM server over HTTP: readiness, served models, version, a streamed smoke test.

Stdlib and ansible.module_utils.urls (open_url: proxies, certificates, one User-Agent, as every
Ansible HTTP client), so the engine_health module, the engine_benchmark load and the tests share it.
What "ready" means per engine (SGLang 0.5.23 http_server.py, vLLM 0.33.0 serve/instrumentator/health.py):

* Both engines load the model before their HTTP server listens: connection refused = loading.
* SGLang /health answers 503 while the warmup request runs (and when a 1-token generation
  does not come back within 20 s), then 200.
* vLLM /health answers 200, or 503 only on EngineDeadError: that is final, not a warm-up.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import re
import struct
import time
import zlib

from http.client import HTTPException
from urllib.error import HTTPError

from ansible_collections.gpufleet.serving.plugins.module_utils.http_open import open_url

ENGINES = ("sglang", "vllm")
# Readiness, version and load endpoints vary by engine version: they live in the knowledge table
# (engines.<engine>.<version>.http) and a plan carries its version's (plan["http"]); callers pass
# them as `endpoints`. These defaults, for callers without a plan, are the newest table versions'
# (tests/unit/test_engine_plan_versions.py keeps them equal). /v1/models and /v1/chat/completions
# are the OpenAI protocol, the same in every version, and stay in code.
DEFAULT_ENDPOINTS = {
    "sglang": {"health": "/health", "health_503": "waiting", "version": {"path": "/server_info", "key": "version"},
               "inflight_metrics": ["sglang:num_running_reqs", "sglang:num_queue_reqs"]},
    "vllm": {"health": "/health", "health_503": "dead", "version": {"path": "/version", "key": "version"},
             "inflight_metrics": ["vllm:num_requests_running", "vllm:num_requests_waiting"]},
}


def endpoints_of(engine, endpoints=None):
    """The given endpoints (a plan's `http`), else the engine's defaults."""
    return endpoints or DEFAULT_ENDPOINTS[engine]


REDACTED = "********"
# Secrets as engines may print them: SGLang logs its ServerArgs (api_key='...'), a launch line
# has --api-key X, a client may log an Authorization header.
_SECRET_PATTERNS = (
    re.compile(r"""(api[_-]?key['"]?\s*[=:]\s*['"]?)[^'",\s)]+""", re.IGNORECASE),
    re.compile(r"(--(?:admin-)?api-key[=\s]+)\S+"),
    re.compile(r"(Bearer\s+)\S+", re.IGNORECASE),
)


class EngineHttpError(Exception):
    """An engine answered with an error status; ``str()`` names the status and the engine's message."""

    def __init__(self, path, status, message):
        super(EngineHttpError, self).__init__("%s answered HTTP %s: %s" % (path, status, message))
        self.path, self.status, self.message = path, status, message


def redact(text, secrets=()):
    """Mask the given secrets and anything that looks like an API key or bearer token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def error_message(body):
    """The human part of an engine error body (vLLM {"error": {...}}, SGLang flat, FastAPI {"detail"})."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] if isinstance(body, bytes) else str(body)[:300]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message"))
        for key in ("error", "message", "detail"):
            if data.get(key):
                return str(data[key])
    return json.dumps(data)[:300]


def _request(base_url, path, api_key=None, payload=None, timeout=10.0):
    headers = {"Accept": "application/json"}
    data = None
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    if payload is not None:
        data = json.dumps(payload).encode("utf-8")
        headers["Content-Type"] = "application/json"
    # The response is returned unread: smoke_chat reads the SSE stream line by line as it arrives (the
    # TTFT is the time of the first content line), so no reading-all client (fetch_url, requests) here.
    # HTTP error statuses raise urllib's HTTPError, as urlopen did.
    return open_url(base_url.rstrip("/") + path, data=data, headers=headers, method="POST" if data else "GET",
                    timeout=timeout)


def get(base_url, path, api_key=None, timeout=10.0):
    """Return (status, body bytes). HTTP errors are statuses; connection problems raise OSError
    (urllib's URLError is one) or http.client.HTTPException."""
    try:
        with _request(base_url, path, api_key, timeout=timeout) as resp:
            return resp.status, resp.read()
    except HTTPError as exc:
        return exc.code, exc.read()


def probe_health(base_url, engine, timeout=30.0, endpoints=None):
    """One readiness probe: ("ready" | "waiting" | "dead", human description)."""
    http = endpoints_of(engine, endpoints)
    path = http["health"]
    try:
        status, _body = get(base_url, path, timeout=timeout)
    except (OSError, HTTPException) as exc:  # refused, reset, timed out, half-started: still loading
        reason = getattr(exc, "reason", exc)
        return "waiting", "GET %s -> no answer (%s)" % (path, reason)
    if status == 200:
        return "ready", "GET %s -> 200" % path
    if status == 503 and http["health_503"] == "waiting":
        return "waiting", "GET %s -> 503 (%s is starting or warming up)" % (path, engine)
    if status == 503:
        return "dead", "GET %s -> 503 (%s reports its engine dead)" % (path, engine)
    return "waiting", "GET %s -> unexpected HTTP %s (is this the %s port?)" % (path, status, engine)


def wait_ready(base_url, engine, timeout, interval, stop_check=None, clock=time.monotonic, sleep=time.sleep,
               endpoints=None):
    """Probe until ready, dead, `stop_check()` returns a reason, or `timeout` seconds pass.

    Returns (ready, elapsed seconds, last probe description, stop reason or None).
    """
    start = clock()
    while True:
        remaining = timeout - (clock() - start)
        state, seen = probe_health(base_url, engine, timeout=max(1.0, min(30.0, remaining)), endpoints=endpoints)
        elapsed = clock() - start
        if state == "ready":
            return True, elapsed, seen, None
        if state == "dead":
            return False, elapsed, seen, seen
        stop = stop_check() if stop_check else None
        if stop:
            return False, elapsed, seen, stop
        if elapsed >= timeout:
            return False, elapsed, seen, None
        sleep(max(0.0, min(interval, timeout - elapsed)))


def list_models(base_url, api_key=None, timeout=10.0):
    """Model ids of GET /v1/models; raises EngineHttpError (e.g. 401 for a wrong key)."""
    status, body = get(base_url, "/v1/models", api_key, timeout)
    if status != 200:
        raise EngineHttpError("/v1/models", status, error_message(body))
    return [card["id"] for card in json.loads(body).get("data", [])]


def engine_version(base_url, engine, api_key=None, timeout=10.0, endpoints=None):
    """The version the server reports (SGLang has no /version: it is in its server info). None if unknown."""
    where = endpoints_of(engine, endpoints)["version"]
    try:
        status, body = get(base_url, where["path"], api_key, timeout)
        return json.loads(body).get(where["key"]) if status == 200 else None
    except (OSError, ValueError, AttributeError):
        return None


def smoke_chat(base_url, model, prompt, max_tokens, api_key=None, timeout=60.0, clock=time.monotonic):
    """Stream one chat completion; measure time to first token and decode speed.

    Returns {"ttft_ms", "tokens_per_s", "completion_tokens", "text"}. tokens_per_s is the decode
    rate after the first token ((n - 1) / (t_last - t_first)); None when fewer than 2 tokens came.
    """
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
               "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    sent = clock()
    try:
        resp = _request(base_url, "/v1/chat/completions", api_key, payload, timeout)
    except HTTPError as exc:
        raise EngineHttpError("/v1/chat/completions", exc.code, error_message(exc.read()))
    first = last = None
    chunks, usage_tokens, text = 0, None, []
    with resp:
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:  # both engines report mid-stream failures as a data event
                raise EngineHttpError("/v1/chat/completions", "stream", error_message(data))
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    last = clock()
                    first = first or last
                    chunks += 1
                    text.append(content)
    tokens = usage_tokens if usage_tokens is not None else chunks
    if first is None:
        return {"ttft_ms": None, "tokens_per_s": None, "completion_tokens": tokens, "text": ""}
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return {"ttft_ms": round((first - sent) * 1000.0, 1), "tokens_per_s": round(rate, 1) if rate else None,
            "completion_tokens": tokens, "text": "".join(text)}


def tiny_png(side=32):
    """A side x side grey PNG (stdlib only). 32 px: the smallest side both Qwen-VL processors take
    without upscaling (patch 14 x merge 2 = 28, patch 16 x merge 2 = 32)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + b"\x80" * side for _row in range(side))  # filter byte + 8-bit grey pixels
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def image_message(prompt="Describe the image in one word."):
    """One OpenAI chat user message with a text part and an image_url part (a base64 PNG data URL)."""
    url = "data:image/png;base64," + base64.b64encode(tiny_png()).decode("ascii")
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": prompt}]}


def image_chat(base_url, model, max_tokens=8, api_key=None, timeout=120.0):
    """One non-streamed chat completion with an image; returns its completion token count. Raises
    EngineHttpError when the engine refuses it (a VLM served without its multimodal side does)."""
    payload = {"model": model, "messages": [image_message()], "max_tokens": max_tokens, "temperature": 0}
    try:
        with _request(base_url, "/v1/chat/completions", api_key, payload, timeout) as resp:
            body = json.loads(resp.read())
    except HTTPError as exc:
        raise EngineHttpError("/v1/chat/completions (image)", exc.code, error_message(exc.read()))
    return (body.get("usage") or {}).get("completion_tokens") or 0


# Requests an engine holds (running + queued), by the gauges each engine exports on /metrics:
# vllm/v1/metrics/loggers.py (0.33.0) and sglang/srt/observability/metrics_collector.py (0.5.23).
INFLIGHT_METRICS = {engine: tuple(http["inflight_metrics"]) for engine, http in DEFAULT_ENDPOINTS.items()}


def metric_sum(text, names):
    """Sum of every sample of the named metrics in a Prometheus text exposition (all label sets)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def inflight(base_url, engine, timeout=10.0, endpoints=None):
    """Requests the engine is running or has queued, from its /metrics; None when it does not say."""
    status, body = get(base_url, "/metrics", timeout=timeout)
    if status != 200:
        raise EngineHttpError("/metrics", status, error_message(body))
    count = metric_sum(body.decode("utf-8", "replace"), endpoints_of(engine, endpoints)["inflight_metrics"])
    return None if count is None else int(count)
