"""gpufleet.serving.engine_health against the engine stand-in (a local process), plus one real
`ansible localhost -m gpufleet.serving.engine_health` run and one run against a stand-in container."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http
from ansible_collections.gpufleet.serving.plugins.modules import engine_health
from test_engine_standin import KEY, REPO, StandIn, make_model

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
STANDIN_IMAGE = "gpufleet/engine-standin:dev"


def params(url, engine, **overrides):
    base = {"url": url, "engine": engine, "served_model_name": "qwen3", "expect_models": [], "api_key": KEY,
            "timeout": 20.0, "interval": 0.1, "smoke_prompt": "Say hello", "max_tokens": 8, "container_name": None}
    base.update(overrides)
    return base


class FakeDocker(object):
    """Stands for engine_health.DockerCli: a container in a fixed state with fixed logs."""

    def __init__(self, status="running", exit_code=0, logs=()):
        self.name, self.status, self.exit_code, self.logs = "engine", status, exit_code, list(logs)
        self.inspections = 0

    def state(self):
        self.inspections += 1
        return {"status": self.status, "running": self.status == "running", "exit_code": self.exit_code}

    def log_tail(self):
        return self.logs


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "model")


@pytest.mark.parametrize("engine, version", [("sglang", "0.5.23"), ("vllm", "0.33.0")])
def test_waits_through_loading_and_warmup_then_measures(model, engine, version):
    args = ["--served-model-name", "qwen3", "--api-key", KEY]
    with StandIn(engine, model, args, STANDIN_LOAD_SECONDS="0.6", STANDIN_WARMUP_SECONDS="0.6",
                 STANDIN_TOKEN_DELAY_MS="20") as server:
        ok, result, msg = engine_health.probe(params(server.url, engine))
    assert ok, msg
    assert result["healthy"] is True
    assert result["time_to_healthy_s"] >= (1.2 if engine == "sglang" else 0.6)  # SGLang adds its 503 warm-up
    assert result["models"] == ["qwen3"]
    assert result["engine_version"] == version
    assert 15 <= result["ttft_ms"] < 500
    assert 25 <= result["tokens_per_s"] <= 55  # one token every 20 ms
    assert result["diagnosis"] is None


def test_timeout_reports_a_diagnosis_with_keys_masked(model):
    docker = FakeDocker(logs=["server_args=ServerArgs(model_path='/m', api_key='%s')" % KEY, "Loading weights"])
    with StandIn("sglang", model, ["--api-key", KEY], STANDIN_LOAD_SECONDS="60") as server:
        start = time.monotonic()
        ok, result, msg = engine_health.probe(params(server.url, "sglang", timeout=1.0, interval=0.2), docker)
        assert time.monotonic() - start < 5
    assert not ok and result["healthy"] is False
    assert "sglang at %s was not ready after" % server.url in msg
    diagnosis = result["diagnosis"]
    assert "GET /health -> no answer" in diagnosis["last_probe"]
    assert diagnosis["container"]["status"] == "running"
    assert diagnosis["last_log_lines"] == ["server_args=ServerArgs(model_path='/m', api_key='********')",
                                           "Loading weights"]
    assert docker.inspections >= 3  # inspected while waiting, not only at the end


def test_an_exited_container_stops_the_wait_at_once():
    docker = FakeDocker(status="exited", exit_code=1, logs=["RuntimeError: Cannot find any model weights with `/m`"])
    start = time.monotonic()
    ok, result, msg = engine_health.probe(params("http://127.0.0.1:9", "vllm", timeout=60.0, interval=1.0), docker)
    assert time.monotonic() - start < 5
    assert not ok
    assert msg.startswith("vllm stopped waiting after")
    assert "container engine is exited (exit code 1)" in msg
    assert result["diagnosis"]["container"]["exit_code"] == 1
    assert result["diagnosis"]["last_log_lines"][-1].startswith("RuntimeError: Cannot find any model weights")


def test_wrong_model_name_fails_naming_what_is_served(model):
    with StandIn("vllm", model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        ok, result, msg = engine_health.probe(params(server.url, "vllm", served_model_name="llama"))
        ok2, _unused, msg2 = engine_health.probe(params(server.url, "vllm", expect_models=["qwen3", "q3"]))
    assert not ok and not ok2
    assert msg == "/v1/models does not list ['llama']; the server lists ['qwen3']"
    assert msg2 == "/v1/models does not list ['q3']; the server lists ['qwen3']"
    assert result["time_to_healthy_s"] is not None  # it was up; the names were wrong


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_wrong_key_fails_clearly_without_echoing_it(model, engine):
    with StandIn(engine, model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        ok, result, msg = engine_health.probe(params(server.url, engine, api_key="not-the-key"))
    assert not ok
    assert msg == "/v1/models answered HTTP 401: Unauthorized (check api_key)"
    assert result["diagnosis"]["last_probe"] == "GET /health -> 200"


def test_vllm_engine_dead_503_ends_the_wait(monkeypatch):
    answers = iter([("waiting", "GET /health -> no answer"), ("dead", "GET /health -> 503 (vLLM reports its engine dead)")])
    monkeypatch.setattr(engine_http, "probe_health", lambda *a, **k: next(answers))
    ready, _unused, seen, stop = engine_http.wait_ready("http://x", "vllm", 60, 0, sleep=lambda s: None)
    assert (ready, stop) == (False, "GET /health -> 503 (vLLM reports its engine dead)")


def test_redact_masks_keys_in_the_forms_engines_log():
    assert engine_http.redact("--api-key abc --port 1") == "--api-key ******** --port 1"
    assert engine_http.redact('{"api_key": "abc"}') == '{"api_key": "********"}'
    assert engine_http.redact("Authorization: Bearer abc") == "Authorization: Bearer ********"
    assert engine_http.redact("key is hunter2", ["hunter2"]) == "key is ********"


def _ansible(tmp_path, url, api_key, *cli_args):
    """One ad-hoc run with the JSON callback; returns (rc, result of localhost)."""
    (tmp_path / "ansible.cfg").write_text("")  # keep the checkout's ansible.cfg and inventory out of it
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    module_args = "url=%s engine=vllm served_model_name=qwen3 api_key=%s interval=0.2 timeout=20" % (url, api_key)
    argv = [ANSIBLE, "localhost", "-m", "gpufleet.serving.engine_health", "-a", module_args] + list(cli_args)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert KEY not in done.stdout + done.stderr
    out = json.loads(done.stdout)
    return done.returncode, out["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_through_ansible(tmp_path, model):
    with StandIn("vllm", model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        rc, result = _ansible(tmp_path, server.url, KEY, "--check")
        rc_bad, bad = _ansible(tmp_path, server.url, "wrong")
    assert rc == 0, result
    assert (result["changed"], result["healthy"], result["models"]) == (False, True, ["qwen3"])
    assert result["engine_version"] == "0.33.0"
    assert result["ttft_ms"] > 0 and result["tokens_per_s"] > 0
    assert rc_bad == 2
    assert bad["failed"] is True and bad["changed"] is False
    assert bad["msg"] == "/v1/models answered HTTP 401: Unauthorized (check api_key)"


def _image_present():
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "image", "inspect", STANDIN_IMAGE], capture_output=True, check=False).returncode == 0


def _run(argv):
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.skipif(not _image_present(), reason="needs docker and the %s image" % STANDIN_IMAGE)
def test_diagnoses_a_real_container_that_refused_to_start():
    name = "gpufleet-test-engine-health-%d" % os.getpid()
    subprocess.run(["docker", "run", "-d", "--name", name, STANDIN_IMAGE, "vllm", "serve", "/nonexistent",
                    "--api-key", KEY], check=True, capture_output=True)
    try:
        docker = engine_health.DockerCli(_run, shutil.which("docker"), name)
        ok, result, msg = engine_health.probe(params("http://127.0.0.1:9", "vllm", timeout=60.0, interval=0.5), docker)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    assert not ok
    assert "container %s is exited (exit code 1)" % name in msg
    container = result["diagnosis"]["container"]
    assert (container["status"], container["exit_code"], container["oom_killed"]) == ("exited", 1, False)
    assert any("Invalid repository ID or local directory specified: '/nonexistent'" in line
               for line in result["diagnosis"]["last_log_lines"])


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_image_check_sends_one_image_to_a_vl_model_and_fails_on_a_text_model(tmp_path, engine):
    from test_engine_standin import make_vl_model
    args = ["--served-model-name", "qwen3", "--api-key", KEY]
    with StandIn(engine, make_vl_model(tmp_path / "vl"), args) as server:
        ok, result, msg = engine_health.probe(params(server.url, engine, image_check=True))
    assert ok, msg
    assert result["image_tokens"] == 8  # max_tokens of the gate
    with StandIn(engine, make_model(tmp_path / "text"), args) as server:
        plain_ok, plain, _unused = engine_health.probe(params(server.url, engine))
        ok, result, msg = engine_health.probe(params(server.url, engine, image_check=True))
    assert plain_ok and plain["image_tokens"] is None
    assert not ok
    assert msg == "/v1/chat/completions (image) answered HTTP 400: the served model is not a multimodal model"


def test_tiny_png_is_a_valid_png():
    import struct
    import zlib
    png = engine_http.tiny_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (32, 32)
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT" and len(zlib.decompress(png[41:41 + idat_len])) == 32 * 33
