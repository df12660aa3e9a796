"""The real SGLang model gateway (smg 1.13.0 from requirements.txt, started by the image's launcher) in front
of engine stand-ins (lab/engine_standin, a TEST DOUBLE of SGLang/vLLM) on loopback: what gateway_workers
and engine_inflight do to a real router, and what the router then does with requests."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from test_engine_standin import REPO, StandIn, bearer, make_model

from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_api
from ansible_collections.gpufleet.serving.plugins.module_utils.engine_http import metric_sum
from ansible_collections.gpufleet.serving.plugins.modules import engine_inflight, gateway_workers

LAUNCHER = os.path.join(REPO, "roles", "gateway", "files", "image", "launch.py")
KEY = "sk-gateway-and-engines-" + "5e3c"
SERVED = "qwen3"

pytest.importorskip("smg", reason="smg (requirements.txt) is not installed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """The router, configured the way roles/gateway writes router.json."""

    def __init__(self, tmp_path, **options):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.config = tmp_path / "router.json"
        self.workers_file = tmp_path / "workers.json"
        config = {"host": "127.0.0.1", "port": self.port, "prometheus-port": self.metrics_port,
                  "policy": "round_robin", "api-key": KEY, "health-check-interval-secs": 1,
                  "health-failure-threshold": 1, "health-check-endpoint": "/health",
                  "worker-urls-file": str(self.workers_file)}
        config.update(options)
        self.config.write_text(json.dumps(config))
        self.config.chmod(0o600)
        self.log = open(tmp_path / "router.log", "w")
        self.proc = subprocess.Popen([sys.executable, LAUNCHER, str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.router = gateway_api.Router(self.url, KEY, timeout=5)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, open(self.log.name).read()[-2000:]
            try:
                self.router.health()
                break
            except gateway_api.GatewayError:
                assert time.monotonic() < deadline, "router did not answer in 30 s"
                time.sleep(0.2)

    def stop(self):
        # SIGKILL: smg's graceful shutdown waits 5 s for connections, which no test here looks at.
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


def chat(url, model, stream=False, key=KEY, max_tokens=5):
    """A chat completion as clients send it (smg refuses stream_options without stream, as vLLM does)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": max_tokens,
            "stream": stream}
    return requests.post(url + "/v1/chat/completions", json=body, headers=bearer(key), stream=stream, timeout=30)


def params(**kw):
    base = {"state": "query", "workers": [], "addresses": [], "keep_addresses": [], "timeout": 30.0,
            "interval": 0.2, "worker_api_key": KEY}
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Two SGLang and one vLLM stand-in serving one model; tokens stream slowly enough to be caught in flight."""
    model = make_model(tmp_path_factory.mktemp("gw") / "model")
    config = tmp_path_factory.mktemp("gwcfg") / "engine.json"
    config.write_text(json.dumps({"api-key": KEY}))
    started = []
    for engine in ("sglang", "sglang", "vllm"):
        args = ["--served-model-name", SERVED, "--config", str(config)]
        if engine == "sglang":
            args.append("--enable-metrics")
        started.append(StandIn(engine, model, args, STANDIN_TOKEN_DELAY_MS="150"))
    for s in started:
        s.wait_ready()
    yield started
    for s in started:
        s.__exit__()


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    yield gw
    gw.stop()


def requests_served(engine):
    text = requests.get(engine.url + "/metrics", timeout=5).text
    return metric_sum(text, ("sglang:num_requests_total",))


def join(gw, urls):
    result, failure = gateway_workers.converge(params(state="joined", workers=urls), gw.router)
    assert failure is None, failure
    return result


def test_joined_workers_become_ready_and_take_requests_for_both_engines(gateway, engines):
    urls = [e.url for e in engines]
    result = join(gateway, urls)
    assert result["changed"] and sorted(result["added"]) == sorted(urls)
    statuses = dict((w["url"], (w["status"], w["model"])) for w in result["workers"])
    assert statuses == dict((u, ("ready", SERVED)) for u in urls)
    assert join(gateway, urls)["changed"] is False  # idempotent

    # Through the gateway with its key (forwarded to the engines, which share it); refused without.
    for _unused in range(len(urls)):
        resp = chat(gateway.url, SERVED, key=KEY)
        assert resp.status_code == 200, resp.text
    assert chat(gateway.url, SERVED, key="wrong").status_code == 401


def test_a_drained_worker_gets_no_new_request_and_finishes_the_one_it_holds(gateway, engines):
    sg1, sg2, _unused = engines
    join(gateway, [sg1.url, sg2.url])
    # A long stream that the router sends to one of the two (round robin): find which, drain it.
    holder = {}

    def stream():
        resp = chat(gateway.url, SERVED, stream=True, key=KEY, max_tokens=200)
        holder["lines"] = [line for line in resp.iter_lines() if line]
        holder["status"], holder["ended"] = resp.status_code, time.monotonic()

    thread = threading.Thread(target=stream)
    thread.start()
    deadline = time.monotonic() + 10
    busy = None
    while busy is None and time.monotonic() < deadline:
        for e in (sg1, sg2):
            if engine_inflight.read(e.url, "sglang", 5)[0]:
                busy = e
        time.sleep(0.05)
    assert busy is not None, "the stream reached no engine"

    drain_started = time.monotonic()
    result, failure = gateway_workers.converge(params(state="drained", workers=[busy.url]), gateway.router)
    assert failure is None and result["removed"] == [busy.url]
    assert busy.url not in [w["url"] for w in result["workers"]]
    thread.join(30)
    # The stream was in flight when the drain began and ran to its end through the gateway.
    assert holder["status"] == 200 and holder["lines"][-1] == b"data: [DONE]", holder
    assert holder["ended"] > drain_started
    # New requests all go to the other engine.
    served_before = requests_served(busy)
    for _unused in range(4):
        assert chat(gateway.url, SERVED, key=KEY).status_code == 200
    assert requests_served(busy) == served_before
    # Draining again changes nothing.
    again, failure = gateway_workers.converge(params(state="drained", workers=[busy.url]), gateway.router)
    assert failure is None and again["changed"] is False


def test_inflight_counts_what_an_engine_holds_and_waits_until_it_is_idle(engines):
    sglang, _unused, vllm = engines
    for engine, name in ((sglang, "sglang"), (vllm, "vllm")):
        thread = threading.Thread(target=lambda: chat(engine.url, SERVED, stream=True, max_tokens=200).content)
        thread.start()
        deadline = time.monotonic() + 5
        while not engine_inflight.read(engine.url, name, 5)[0] and time.monotonic() < deadline:
            time.sleep(0.02)
        watched = engine_inflight.watch({"url": engine.url, "engine": name, "wait_idle": True, "timeout": 60,
                                         "interval": 0.1, "request_timeout": 5})
        thread.join(30)
        assert watched["inflight_before"] == 1 and watched["idle"] and watched["inflight"] == 0, watched
        assert watched["waited_s"] > 0.5
    gone = "http://127.0.0.1:%d" % free_port()
    quiet = engine_inflight.watch({"url": gone, "engine": "sglang", "wait_idle": True, "timeout": 5, "interval": 0.1,
                                   "request_timeout": 2})
    assert quiet["inflight"] is None and quiet["idle"] and "no answer" in quiet["answer"]


def test_present_makes_the_list_the_inventory_and_keeps_unknown_hosts(gateway, engines):
    sg1, sg2, vl = engines
    join(gateway, [sg1.url, sg2.url])
    # sg2 stands for a host this run could not reach: its address is kept, whatever the wanted list says.
    # All stand-ins share 127.0.0.1, so this keeps every worker: the first call only adds.
    result, failure = gateway_workers.converge(
        params(state="present", workers=[vl.url], keep_addresses=["127.0.0.1"]), gateway.router)
    assert failure is None and result["added"] == [vl.url] and result["removed"] == []
    # Without it, the list becomes exactly the wanted one.
    result, failure = gateway_workers.converge(params(state="present", workers=[vl.url]), gateway.router)
    assert failure is None and sorted(result["removed"]) == sorted([sg1.url, sg2.url])
    assert [w["url"] for w in result["workers"]] == [vl.url]
    check, _unused = gateway_workers.converge(params(state="present", workers=[vl.url, sg1.url]), gateway.router,
                                              check_mode=True)
    assert check["changed"] and check["added"] == [sg1.url]
    assert [w["url"] for w in gateway.router.workers()] == [vl.url]  # check mode changed nothing


def test_a_worker_that_never_answers_fails_the_join_naming_it(gateway):
    dead = "http://127.0.0.1:%d" % free_port()
    result, failure = gateway_workers.converge(params(state="joined", workers=[dead], timeout=3), gateway.router)
    assert failure and dead in failure and "not ready" in failure


def test_a_registration_already_under_way_is_waited_for_not_an_error(gateway, tmp_path):
    """smg answers 409 WORKER_CREATE_IN_PROGRESS to a second POST while its first registration still probes
    a worker (a run cut short, an engine still loading): the sync waits for that registration instead."""
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    assert gateway.router.add(url, KEY) is True
    assert gateway.router.add(url, KEY) is False  # the router's 409: the first one is still under way
    model = make_model(tmp_path / "late")
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"api-key": KEY}))
    late = StandIn("sglang", model, ["--served-model-name", SERVED, "--config", str(config)], port=port)
    try:
        result, failure = gateway_workers.converge(params(state="present", workers=[url], timeout=60),
                                                   gateway.router)
        assert failure is None, failure
        assert [(w["url"], w["status"]) for w in result["workers"]] == [(url, "ready")]
    finally:
        late.__exit__()


def test_a_dead_engine_is_taken_out_by_the_routers_health_checks(tmp_path, engines):
    """Outside any rollout: an engine that dies stops getting requests (health-check-interval 1 s here)."""
    gw = Gateway(tmp_path)
    model = make_model(tmp_path / "m")
    config = tmp_path / "engine.json"
    config.write_text(json.dumps({"api-key": KEY}))
    doomed = StandIn("sglang", model, ["--served-model-name", SERVED, "--config", str(config)])
    try:
        doomed.wait_ready()
        join(gw, [engines[0].url, doomed.url])
        doomed.proc.kill()
        doomed.proc.communicate()
        met, workers, _unused = gateway_api.wait_for(
            gw.router, lambda ws: gateway_api.by_url(ws)[doomed.url]["status"] != "ready", 20, 0.2)
        assert met, workers
        for _unused in range(6):
            assert chat(gw.url, SERVED, key=KEY).status_code == 200
    finally:
        doomed.__exit__()
        gw.stop()


def test_the_key_is_in_no_argv_and_no_environment_of_the_router(gateway):
    cmdline = open("/proc/%d/cmdline" % gateway.proc.pid, "rb").read()
    environ = open("/proc/%d/environ" % gateway.proc.pid, "rb").read()
    assert KEY.encode() not in cmdline and KEY.encode() not in environ
    assert gateway.router.workers() == []  # the router runs with that key: it answers its admin API
    with pytest.raises(gateway_api.GatewayError, match="401"):
        gateway_api.Router(gateway.url, "wrong", timeout=5).workers()
    gateway.log.flush()
    log = open(gateway.log.name).read()
    assert "GET" in log or "/workers" in log  # the router logs its requests, and not the key
    assert KEY not in log


def test_a_router_that_stalls_costs_the_request_timeout_and_says_so():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts, never answers
    url = "http://127.0.0.1:%d" % listener.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(gateway_api.GatewayError) as err:
        gateway_api.Router(url, KEY, timeout=2).workers()
    assert time.monotonic() - started < 10
    assert url in str(err.value) and "no answer within 2 s" in str(err.value)
    listener.close()
    with pytest.raises(gateway_api.GatewayError, match="no answer"):
        gateway_api.Router(url, KEY, timeout=1).workers()  # refused


def test_launcher_turns_the_options_file_into_smg_arguments(tmp_path):
    sys.path.insert(0, os.path.dirname(LAUNCHER))
    try:
        import launch
    finally:
        sys.path.pop(0)
    workers = tmp_path / "workers.json"
    options = {"port": 30080, "api-key": "k", "worker-urls": ["http://a:1"], "worker-urls-file": str(workers),
               "disable-retries": True, "log-json": False, "model-path": None}
    assert launch.router_argv(options) == ["--port", "30080", "--api-key", "k", "--disable-retries",
                                           "--worker-urls", "http://a:1"]  # no file yet: no more workers
    workers.write_text(json.dumps(["http://b:2", "http://c:3"]))
    argv = launch.router_argv(options)
    assert argv[-4:] == ["--worker-urls", "http://a:1", "http://b:2", "http://c:3"]
    # smg's own parser takes them.
    parsed = launch.parse_router_args(argv)
    assert parsed.worker_urls == ["http://a:1", "http://b:2", "http://c:3"] and parsed.port == 30080
