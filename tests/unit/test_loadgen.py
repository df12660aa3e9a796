"""The benchmark: the load generator's numbers and bounds (module_utils/loadgen), the CSV and SVG
report (module_utils/bench_report), and the engine_benchmark / benchmark_report modules run through
`ansible localhost` against the engine stand-in as a local process."""
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import bench_report, loadgen
from test_engine_standin import KEY, REPO, StandIn, make_model

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")


def sample(ttft, latency=100.0, tokens=10, ok=True, error=None):
    return {"ok": ok, "ttft_ms": ttft, "latency_ms": latency, "tokens": tokens, "error": error}


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 90) == 90
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([3, 1, 2], 0) == 1
    assert loadgen.percentile([], 50) is None


def test_level_stats_counts_only_successes_in_rates():
    samples = [sample(10.0, tokens=20), sample(30.0, tokens=20), sample(None, latency=None, tokens=0, ok=False, error="HTTP 500")]
    stats = loadgen.level_stats(3, samples, 2.0, not_sent=1)
    assert stats["requests"] == 3 and stats["ok"] == 2 and stats["errors"] == 1 and stats["not_sent"] == 1
    assert stats["requests_per_s"] == 1.0 and stats["tokens_per_s"] == 20.0
    assert stats["ttft_ms_mean"] == 20.0 and stats["ttft_ms_p50"] == 10.0 and stats["ttft_ms_p90"] == 30.0
    assert stats["first_error"] == "HTTP 500"
    assert loadgen.level_stats(1, [], 0.0)["requests_per_s"] is None


def test_run_level_keeps_concurrency_and_sends_exactly_the_requests():
    lock, state, seen = threading.Lock(), {"now": 0, "peak": 0}, []
    gate = threading.Barrier(4, timeout=5)

    def send(index):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            seen.append(index)
        if index < 4:
            gate.wait()  # the first four overlap: all four workers are busy at once
        with lock:
            state["now"] -= 1
        return sample(5.0)

    stats = loadgen.run_level(send, concurrency=4, requests=10, timeout_s=30)
    assert sorted(seen) == list(range(10)) and stats["requests"] == 10 and stats["ok"] == 10
    assert state["peak"] == 4


def test_run_level_stops_sending_at_its_deadline():
    ticks = iter(range(1000))

    def clock():
        return float(next(ticks))  # every read is one second later

    stats = loadgen.run_level(lambda i: sample(1.0), concurrency=1, requests=100, timeout_s=5, clock=clock)
    assert 0 < stats["requests"] < 100 and stats["not_sent"] == 100 - stats["requests"]


@pytest.fixture
def standin(tmp_path):
    model = make_model(tmp_path / "model")
    with StandIn("sglang", model, ["--served-model-name", "qwen3", "--api-key", KEY],
                 STANDIN_TOKEN_DELAY_MS="5") as server:
        yield server.wait_ready()


def test_chat_sender_measures_streamed_requests(standin):
    levels = loadgen.run(standin.url, "qwen3", [1, 3], 3, 8, "Say hello", api_key=KEY)
    assert [lvl["concurrency"] for lvl in levels] == [1, 3]
    for lvl in levels:
        assert (lvl["requests"], lvl["ok"], lvl["errors"]) == (3, 3, 0)
        assert lvl["tokens_per_s"] > 0 and lvl["requests_per_s"] > 0
        assert 0 < lvl["ttft_ms_p50"] <= lvl["latency_ms_p50"]
    wrong = loadgen.run(standin.url, "qwen3", [2], 2, 8, "Say hello", api_key="wrong")[0]
    assert wrong["ok"] == 0 and wrong["errors"] == 2 and "401" in wrong["first_error"]


RESULTS = [
    {"group": "l40s", "host": "l40s-1", "container": "gpufleet-engine", "engine": "sglang", "levels": [
        {"concurrency": 1, "requests": 5, "ok": 5, "tokens_per_s": 90.0, "ttft_ms_p50": 12.0},
        {"concurrency": 5, "requests": 5, "ok": 5, "tokens_per_s": 400.0, "ttft_ms_p50": 20.0}]},
    {"group": "l40s", "host": "l40s-2", "container": "gpufleet-engine", "engine": "sglang", "levels": [
        {"concurrency": 1, "requests": 5, "ok": 5, "tokens_per_s": 95.0, "ttft_ms_p50": None}]},
    {"group": "turing/x", "host": "turing-1", "container": "eng-a", "engine": "vllm", "levels": [
        {"concurrency": 1, "requests": 5, "ok": 5, "tokens_per_s": 80.0, "ttft_ms_p50": 15.0}]},
]


def test_csv_has_one_row_per_engine_and_level():
    rows = list(csv.DictReader(io.StringIO(bench_report.to_csv(RESULTS[:2]))))
    assert [(r["host"], r["concurrency"]) for r in rows] == [("l40s-1", "1"), ("l40s-1", "5"), ("l40s-2", "1")]
    assert rows[1]["tokens_per_s"] == "400.0" and rows[2]["ttft_ms_p50"] == "" and rows[0]["group"] == "l40s"


def test_svg_is_well_formed_with_a_line_per_engine():
    svg = bench_report.to_svg("l40s", RESULTS[:2])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(ns + "polyline")) == 2     # l40s-1 in both panels; l40s-2 has single points
    texts = [t.text for t in root.iter(ns + "text")]
    assert "output tokens/s" in texts and "median TTFT (ms)" in texts
    assert "l40s-1 gpufleet-engine (sglang)" in texts and "500" in texts  # axis up to a round 500


def test_write_reports_per_group_and_only_when_changed(tmp_path):
    files, changed = bench_report.write_reports(RESULTS, str(tmp_path / "out"))
    assert changed and [os.path.basename(f) for f in files] == ["l40s.csv", "l40s.svg", "turing_x.csv", "turing_x.svg"]
    assert bench_report.write_reports(RESULTS, str(tmp_path / "out")) == (files, False)


def _ansible(tmp_path, module, args):
    (tmp_path / "ansible.cfg").write_text("")
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    done = subprocess.run([ANSIBLE, "localhost", "-m", module, "-a", json.dumps(args)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert KEY not in done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_modules_through_ansible(tmp_path, standin):
    rc, bench = _ansible(tmp_path, "gpufleet.serving.engine_benchmark",
                         {"url": standin.url, "model": "qwen3", "api_key": KEY, "concurrency": [1, 2],
                          "requests": 2, "max_tokens": 4})
    assert rc == 0, bench
    assert bench["changed"] is False and [lvl["ok"] for lvl in bench["levels"]] == [2, 2]
    result = {"group": "lab", "host": "localhost", "container": "standin", "engine": "sglang", "levels": bench["levels"]}
    rc, report = _ansible(tmp_path, "gpufleet.serving.benchmark_report", {"results": [result], "dest": str(tmp_path / "b")})
    assert rc == 0 and report["changed"] is True, report
    assert sorted(os.listdir(tmp_path / "b")) == ["lab.csv", "lab.svg"]
    rc, bad = _ansible(tmp_path, "gpufleet.serving.engine_benchmark",
                       {"url": standin.url, "model": "qwen3", "api_key": "wrong", "concurrency": [1], "requests": 1})
    assert rc == 2 and "no request succeeded at concurrency 1" in bad["msg"] and "401" in bad["msg"]


def test_steady_load_sends_on_schedule_whatever_the_server_speed():
    """Open loop: a slow request does not delay the next one, and stop() waits for those in flight."""
    def send(index):
        time.sleep(0.3 if index % 2 else 0.0)  # every other request is slow
        return {"ok": index != 3, "latency_ms": 300.0 if index % 2 else 1.0, "ttft_ms": None, "tokens": 1,
                "error": None if index != 3 else "HTTP 503"}

    load = loadgen.SteadyLoad(send, rate=50).start()
    time.sleep(0.5)
    samples = load.stop()
    assert 20 <= len(samples) <= 30  # 50/s for 0.5 s
    assert [round(s["sent_at"], 2) for s in samples[:3]] == [0.0, 0.02, 0.04]
    stats = loadgen.window_stats(samples)
    assert stats["sent"] == len(samples) and stats["failed"] == 1 and stats["errors"] == ["HTTP 503"]
    assert stats["p50_ms"] in (1.0, 300.0) and stats["p99_ms"] == 300.0
    early = loadgen.window_stats(samples, end=0.09)  # sent at 0, 0.02 .. 0.08 (0.1 would race the 6th)
    assert early["sent"] == 5 and early["failed"] == 1
    late = loadgen.window_stats(samples, start=10)
    assert late["sent"] == 0 and late["p50_ms"] is None
