"""Prometheus text exposition with each engine's real metric names, labels and buckets.

Names come from vllm/v1/metrics/loggers.py (0.33.0: labels model_name + engine) and
sglang/srt/observability/metrics_collector.py (0.5.23: labels model_name + engine_type,
scheduler gauges add tp/pp/moe_ep rank, token counters add is_streaming).
"""
import threading
import time

VLLM_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
VLLM_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                        50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
SGLANG_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)


def _fmt_labels(labels):
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return "{" + inner + "}"


class _Family:
    def __init__(self, name, kind, doc, buckets=None):
        self.name, self.kind, self.doc, self.buckets = name, kind, doc, buckets
        self.samples = {}  # label tuple -> float, or [bucket counts, sum, count] for histograms

    def render(self):
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples.items():
            if self.kind != "histogram":
                lines.append(f"{self.name}{_fmt_labels(labels)} {float(value)}")
                continue
            counts, total, count = value
            for bound, n in zip(self.buckets, counts):
                lines.append(f"{self.name}_bucket{_fmt_labels(labels + (('le', float(bound)),))} {float(n)}")
            lines.append(f"{self.name}_bucket{_fmt_labels(labels + (('le', '+Inf'),))} {float(count)}")
            lines.append(f"{self.name}_count{_fmt_labels(labels)} {float(count)}")
            lines.append(f"{self.name}_sum{_fmt_labels(labels)} {float(total)}")
        return lines


class Registry:
    def __init__(self):
        self._families = {}
        self._lock = threading.Lock()

    def add(self, name, kind, doc, buckets=None):
        self._families[name] = _Family(name, kind, doc, buckets)

    def set(self, name, labels, value):
        with self._lock:
            self._families[name].samples[tuple(labels.items())] = value

    def inc(self, name, labels, amount=1.0):
        with self._lock:
            samples = self._families[name].samples
            key = tuple(labels.items())
            samples[key] = samples.get(key, 0.0) + amount

    def observe(self, name, labels, value):
        with self._lock:
            family = self._families[name]
            counts, total, count = family.samples.get(tuple(labels.items()), ([0] * len(family.buckets), 0.0, 0))
            counts = [n + (value <= bound) for n, bound in zip(counts, family.buckets)]
            family.samples[tuple(labels.items())] = (counts, total + value, count + 1)

    def render(self):
        with self._lock:
            lines = [line for family in self._families.values() for line in family.render()]
        return "\n".join(lines) + "\n"


class EngineMetrics:
    """Records request events under the engine's own metric names."""

    def __init__(self, engine, model_name):
        self.engine = engine
        self.registry = Registry()
        self.running = 0
        self._lock = threading.Lock()
        add = self.registry.add
        if engine == "vllm":
            self.base = {"model_name": model_name, "engine": "0"}
            self.gauge_labels = self.base
            add("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
            add("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
            add("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
            add("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
            add("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.")
            add("vllm:request_success_total", "counter", "Count of successfully processed requests.")
            add("vllm:time_to_first_token_seconds", "histogram",
                "Histogram of time to first token in seconds.", VLLM_TTFT_BUCKETS)
            add("vllm:e2e_request_latency_seconds", "histogram",
                "Histogram of e2e request latency in seconds.", VLLM_LATENCY_BUCKETS)
        else:
            self.base = {"model_name": model_name, "engine_type": "unified"}
            self.gauge_labels = {**self.base, "tp_rank": 0, "pp_rank": 0, "moe_ep_rank": 0}
            add("sglang:num_running_reqs", "gauge", "The number of running requests.")
            add("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.")
            add("sglang:token_usage", "gauge", "The token usage.")
            add("sglang:gen_throughput", "gauge", "The generation throughput (token/s).")
            add("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.")
            add("sglang:generation_tokens_total", "counter", "Number of generation tokens processed.")
            add("sglang:num_requests_total", "counter", "Number of requests processed.")
            add("sglang:time_to_first_token_seconds", "histogram",
                "Histogram of time to first token in seconds.", SGLANG_BUCKETS)
            add("sglang:e2e_request_latency_seconds", "histogram",
                "Histogram of End-to-end request latency in seconds", SGLANG_BUCKETS)
        self._publish_gauges(0.0)

    def _publish_gauges(self, throughput):
        set_ = self.registry.set
        if self.engine == "vllm":
            set_("vllm:num_requests_running", self.gauge_labels, self.running)
            set_("vllm:num_requests_waiting", self.gauge_labels, 0)
            set_("vllm:kv_cache_usage_perc", self.gauge_labels, min(1.0, self.running * 0.01))
        else:
            set_("sglang:num_running_reqs", self.gauge_labels, self.running)
            set_("sglang:num_queue_reqs", self.gauge_labels, 0)
            set_("sglang:token_usage", self.gauge_labels, min(1.0, self.running * 0.01))
            set_("sglang:gen_throughput", self.gauge_labels, throughput)

    def started(self):
        with self._lock:
            self.running += 1
            self._publish_gauges(0.0)

    def finished(self, prompt_tokens, generated, ttft_s, e2e_s, finish_reason, streaming):
        reg = self.registry
        if self.engine == "vllm":
            reg.inc("vllm:prompt_tokens_total", self.base, prompt_tokens)
            reg.inc("vllm:generation_tokens_total", self.base, generated)
            reg.inc("vllm:request_success_total", {**self.base, "finished_reason": finish_reason})
            reg.observe("vllm:time_to_first_token_seconds", self.base, ttft_s)
            reg.observe("vllm:e2e_request_latency_seconds", self.base, e2e_s)
        else:
            labels = {**self.base, "is_streaming": str(streaming).lower()}
            reg.inc("sglang:prompt_tokens_total", labels, prompt_tokens)
            reg.inc("sglang:generation_tokens_total", labels, generated)
            reg.inc("sglang:num_requests_total", labels)
            reg.observe("sglang:time_to_first_token_seconds", labels, ttft_s)
            reg.observe("sglang:e2e_request_latency_seconds", labels, e2e_s)
        with self._lock:
            self.running -= 1
            self._publish_gauges(generated / e2e_s if e2e_s > 0 else 0.0)

    def request(self, prompt_tokens, finish_reason, streaming):
        """A request just started, counted once when it ends (see RequestRecord)."""
        self.started()
        return RequestRecord(self, prompt_tokens, finish_reason, streaming)

    def render(self):
        return self.registry.render()


class RequestRecord:
    """One request's numbers, counted once: by done() before the answer's last bytes leave (the engines count a
    request before its response ends, so a /metrics read right after the reply sees it), or on leaving the
    with block when the client went away mid-answer."""

    def __init__(self, metrics, prompt_tokens, finish_reason, streaming):
        self.metrics, self.prompt_tokens = metrics, prompt_tokens
        self.finish_reason, self.streaming = finish_reason, streaming
        self.t0, self.ttft, self.sent, self._counted = time.monotonic(), 0.0, [], False

    def token(self, text):
        """A token of the answer is about to be sent."""
        self.ttft = self.ttft or time.monotonic() - self.t0
        self.sent.append(text)

    def done(self):
        if not self._counted:
            self._counted = True
            self.metrics.finished(self.prompt_tokens, len(self.sent), self.ttft, time.monotonic() - self.t0,
                                  self.finish_reason, self.streaming)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.done()
