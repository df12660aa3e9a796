# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""A small closed-loop load generator for SGLang / vLLM (OpenAI API, streamed chat completions).

Stdlib only (threads + engine_http), so it runs inside the engine_benchmark module on the managed
host. Each level keeps `concurrency` requests in flight until `requests` were sent or the level's
deadline passed: the request count and the time are both bounded.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import threading
import time

from http.client import HTTPException

from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(math.ceil(q / 100.0 * len(ordered))))
    return ordered[rank - 1]


def _round(value, digits=1):
    return None if value is None else round(value, digits)


def level_stats(concurrency, samples, duration_s, not_sent=0):
    """Numbers of one level from its samples ({ok, ttft_ms, latency_ms, tokens, error})."""
    ok = [s for s in samples if s["ok"]]
    ttft = [s["ttft_ms"] for s in ok if s["ttft_ms"] is not None]
    latency = [s["latency_ms"] for s in ok]
    errors = [s["error"] for s in samples if not s["ok"]]
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: None)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(errors),
        "not_sent": not_sent,
        "duration_s": _round(duration_s, 3),
        "requests_per_s": _round(per_s(len(ok)), 2),
        "tokens_per_s": _round(per_s(sum(s["tokens"] for s in ok))),
        "ttft_ms_mean": _round(sum(ttft) / len(ttft) if ttft else None),
        "ttft_ms_p50": _round(percentile(ttft, 50)),
        "ttft_ms_p90": _round(percentile(ttft, 90)),
        "ttft_ms_p99": _round(percentile(ttft, 99)),
        "latency_ms_p50": _round(percentile(latency, 50)),
        "latency_ms_p90": _round(percentile(latency, 90)),
        "first_error": errors[0] if errors else None,
    }


def run_level(send, concurrency, requests, timeout_s, clock=time.monotonic):
    """Keep `concurrency` calls of `send(index) -> sample` running until `requests` were sent or
    `timeout_s` passed (a request in flight is let finish); return the level's numbers."""
    lock = threading.Lock()
    state = {"next": 0}
    samples = []
    start = clock()
    deadline = start + timeout_s

    def worker():
        while True:
            with lock:
                index = state["next"]
                if index >= requests or clock() >= deadline:
                    return
                state["next"] = index + 1
            sample = send(index)
            with lock:
                samples.append(sample)

    threads = [threading.Thread(target=worker, daemon=True) for _worker in range(min(concurrency, requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return level_stats(concurrency, samples, clock() - start, not_sent=requests - state["next"])


def chat_sender(url, model, prompt, max_tokens, api_key=None, timeout=60.0, clock=time.monotonic):
    """`send(index)` for run_level: one streamed chat completion; the index makes each prompt
    distinct, so a prefix cache does not turn the benchmark into a cache benchmark."""
    def send(index):
        sent = clock()
        try:
            reply = engine_http.smoke_chat(url, model, "%s (request %d)" % (prompt, index), max_tokens, api_key,
                                           timeout=timeout, clock=clock)
        except (engine_http.EngineHttpError, OSError, HTTPException, ValueError) as exc:
            return {"ok": False, "ttft_ms": None, "latency_ms": None, "tokens": 0,
                    "error": engine_http.redact(str(exc), [api_key])}
        return {"ok": True, "ttft_ms": reply["ttft_ms"], "latency_ms": (clock() - sent) * 1000.0,
                "tokens": reply["completion_tokens"] or 0, "error": None}
    return send


def run(url, model, concurrency, requests, max_tokens, prompt, api_key=None, request_timeout=60.0,
        level_timeout=300.0):
    """Every level in turn; each sends max(requests, concurrency) requests at most."""
    send = chat_sender(url, model, prompt, max_tokens, api_key, request_timeout)
    return [run_level(send, level, max(requests, level), level_timeout) for level in concurrency]


class SteadyLoad(object):
    """Open-loop load for a rollout benchmark: one `send(index)` every 1/`rate` seconds, each in a thread of
    its own, from start() until stop(), whatever the server's speed (a closed loop would slow down with
    the server and hide the failures). Each sample gets `sent_at`, seconds since start()."""

    def __init__(self, send, rate, clock=time.monotonic, sleep=time.sleep):
        self.send, self.period, self.clock, self.sleep = send, 1.0 / rate, clock, sleep
        self.samples, self._lock, self._stop = [], threading.Lock(), threading.Event()
        self._threads, self._pacer, self.start_time = [], None, None

    def _one(self, index, sent_at):
        sample = self.send(index)
        sample["sent_at"] = sent_at
        with self._lock:
            self.samples.append(sample)

    def _pace(self):
        index = 0
        while not self._stop.is_set():
            due = self.start_time + index * self.period
            wait = due - self.clock()
            if wait > 0:
                self._stop.wait(wait)
                continue
            thread = threading.Thread(target=self._one, args=(index, due - self.start_time), daemon=True)
            thread.start()
            self._threads.append(thread)
            index += 1

    def start(self):
        self.start_time = self.clock()
        self._pacer = threading.Thread(target=self._pace, daemon=True)
        self._pacer.start()
        return self

    def elapsed(self):
        return self.clock() - self.start_time

    def stop(self, timeout=120.0):
        """Send nothing more, let the requests in flight finish (up to `timeout` s); the samples by send time."""
        self._stop.set()
        self._pacer.join()
        deadline = self.clock() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self.clock()))
        with self._lock:
            return sorted(self.samples, key=lambda s: s["sent_at"])


def window_stats(samples, start=None, end=None):
    """Sent, failed, p50/p99 latency (ms) of the samples sent in [start, end) seconds, and the first errors."""
    chosen = [s for s in samples if (start is None or s["sent_at"] >= start) and (end is None or s["sent_at"] < end)]
    ok = [s["latency_ms"] for s in chosen if s["ok"]]
    errors = [s["error"] for s in chosen if not s["ok"]]
    return {"sent": len(chosen), "failed": len(errors), "p50_ms": _round(percentile(ok, 50)),
            "p99_ms": _round(percentile(ok, 99)), "errors": errors[:5]}
