"""The engine stand-in (lab/engine_standin, a TEST DOUBLE) run as a local process: command-line
validation against the pinned flag dumps, model checks, startup timing, auth, shapes, metrics."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STANDIN_DIR = os.path.join(REPO, "lab", "engine_standin")
sys.path.insert(0, STANDIN_DIR)

from standin import flags, launch  # noqa: E402  (lab code, not part of the collection)

from ansible_collections.gpufleet.serving.plugins.module_utils import flag_dump as collection_flag_dump  # noqa: E402
from ansible_collections.gpufleet.serving.plugins.plugin_utils import engine_plan, knowledge  # noqa: E402

KEY = "sk-standin-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(root, config=True, weights=True):
    os.makedirs(root, exist_ok=True)
    if config:
        with open(os.path.join(root, "config.json"), "w") as f:
            json.dump({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
                       "max_position_embeddings": 40960}, f)
    if weights:
        open(os.path.join(root, "model.safetensors"), "w").close()
    return str(root)


def command(engine, model, args=(), port=None, cli=False):
    """The real command lines: python3 -m sglang.launch_server / sglang serve / vllm serve."""
    where = [] if port is None else ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "vllm":
        return [sys.executable, os.path.join(STANDIN_DIR, "bin", "vllm"), "serve", model, *where, *args]
    if cli:
        return [sys.executable, os.path.join(STANDIN_DIR, "bin", "sglang"), "serve", model, *where, *args]
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", model, *where, *args]


def standin_env(**extra):
    # The image gets data/engine_flags copied in by lab/labctl.py; from the checkout, point at it.
    env = dict(os.environ, PYTHONPATH=STANDIN_DIR, STANDIN_FLAGS_DIR=os.path.join(REPO, "data", "engine_flags"),
               PYTHONDONTWRITEBYTECODE="1", STANDIN_LOAD_SECONDS="0.2",
               STANDIN_WARMUP_SECONDS="0.3", STANDIN_TOKEN_DELAY_MS="5")
    env.pop("VLLM_API_KEY", None)
    env.update(extra)
    return env


class StandIn:
    """A stand-in server process on a free loopback port."""

    def __init__(self, engine, model, args=(), cli=False, port=None, **env):
        self.engine, self.port = engine, port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen(command(engine, model, args, self.port, cli), env=standin_env(**env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError("stand-in not ready in %ss" % timeout)

    def stop(self):
        """Stop it; returns (stdout, stderr)."""
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, err
        return out, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def run_once(engine, model, args=(), cli=False):
    done = subprocess.run(command(engine, model, args, cli=cli), env=standin_env(), capture_output=True,
                          text=True, timeout=30, check=False)
    return done.returncode, done.stderr


def bearer(key=KEY):
    return {"Authorization": "Bearer " + key}


def chat(url, model, stream=False, key=KEY, max_tokens=5):
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": max_tokens,
            "stream": stream, "stream_options": {"include_usage": True}}
    return requests.post(url + "/v1/chat/completions", json=body, headers=bearer(key), stream=stream, timeout=10)


def metric(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all('%s="%s"' % kv in line for kv in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "model")


def parse(engine, argv, version=None):
    """The stand-in's own command-line check, in process: flags.build_parser + launch.flag_check."""
    version = version or flags.DEFAULT_VERSIONS[engine]
    entries = flags.load_dump(engine, version)
    return launch.flag_check(engine, entries, flags.build_parser(engine, entries, engine), argv)


def test_parser_is_the_collections_flag_dump_with_defaults_and_engine_conversions():
    assert os.path.samefile(flags.flag_dump.__file__, collection_flag_dump.__file__)
    args = parse("sglang", ["--model-path", "/m", "--tp-size", "2", "--context-length", "32Ki",
                            "--dtype", "bfloat16", "--enable-tf32-matmul", "--no-lora-strict-loading"])
    assert (args.tp_size, args.context_length, args.dtype) == (2, 32768, "bfloat16")
    assert (args.enable_tf32_matmul, args.lora_strict_loading, args.host, args.port) == (True, False, "127.0.0.1", 30000)
    assert parse("sglang", ["--context-length", "25.6k"]).context_length == 25600  # SGLang: SI k/M/G/T, IEC Ki..
    args = parse("vllm", ["/m", "--max-model-len", "32k", "--disable-prefix-caching", "-ep",
                          "--served-model-name", "a", "b", "--api-key", "k1", "k2"])
    assert (args.model_tag, args.max_model_len, args.enable_prefix_caching, args.port) == ("/m", 32000, False, 8000)
    assert (args.enable_expert_parallel, args.served_model_name, args.api_key) == (True, ["a", "b"], ["k1", "k2"])
    assert parse("vllm", ["--max-model-len", "32K"]).max_model_len == 32768  # vLLM: uppercase is binary
    assert parse("vllm", ["--max-model-len", "auto"]).max_model_len == -1
    assert parse("vllm", ["--host", "None"]).host is None  # _optional_type


def test_default_versions_are_the_tables():
    assert flags.DEFAULT_VERSIONS == knowledge.load_knowledge()["default_versions"]


def _cases(entries):
    """Command lines derived from a dump: for each option a valid use and the ways it can be wrong
    (missing value, bad choice, bad number, a prefix, a typo)."""
    flags_in_dump = {f for e in entries for f in e["flags"]}
    good = {"int": "1", "float": "0.5", "loads": "{}", "human_readable_int": "1k", "human_readable_int_or_auto": "2k"}
    for entry in entries:
        kind, flag = collection_flag_dump.flag_kind(entry), entry["flags"][-1]
        if kind == "help":
            continue
        if flag.startswith("--") and flag[:-1] not in flags_in_dump:
            yield [flag[:-1]] + ([] if kind in ("switch", "paired") else ["1"])
        yield [flag + "-typo"]
        if kind in ("switch", "paired"):
            yield [flag]
            continue
        choices = [c for c in entry["choices"] or () if c is not None]
        nargs = entry["nargs"]
        value = str(choices[0]) if choices else good.get(entry["type"], "x")
        yield [flag] + [value] * (2 if nargs in ("+", "*", 2) else 1)
        if nargs not in ("?", "*"):
            yield [flag]
        if choices:
            yield [flag, "no-such-choice"]
        if entry["type"] in ("int", "float", "human_readable_int", "human_readable_int_or_auto", "loads"):
            yield [flag, "not-a-number"]


def _table_versions():
    kn = knowledge.load_knowledge()
    return [(e, v, kn["engines"][e][v]["flag_dump"]) for e in sorted(kn["engines"])
            for v in knowledge.engine_versions(kn, e)]


@pytest.mark.parametrize("engine, version, dump", _table_versions())
def test_refuses_exactly_what_flag_dump_refuses_for_every_table_version(engine, version, dump):
    """The planner's check (the collection's flag_dump, as the planner builds it) against the stand-in's,
    over command lines derived from every option of the version's dump."""
    planner = collection_flag_dump.build_parser(engine, version)
    entries = flags.flag_dump.load_dump(os.path.join(REPO, "data", "engine_flags", dump))
    standin = flags.build_parser(engine, entries, engine)
    cases = list(_cases(entries))
    refused = 0
    for argv in cases:
        try:
            collection_flag_dump.check_argv(planner, argv)
            expected = None
        except collection_flag_dump.ArgvError as exc:
            expected, refused = str(exc), refused + 1
        try:
            launch.flag_check(engine, entries, standin, argv)
            got = None
        except flags.ArgvError as exc:
            got = str(exc)
        assert got == expected, (argv, expected, got)
    assert refused > len(cases) // 2 and refused < len(cases)  # the cases test both ways


@pytest.mark.parametrize("engine, version, dump", _table_versions())
def test_the_image_of_a_version_checks_against_that_versions_dump_and_reports_it(model, engine, version, dump):
    """What labctl bakes into the image tagged as a version's real image: STANDIN_IMAGE_ENGINE,
    STANDIN_ENGINE_VERSION, STANDIN_FLAG_DUMP. A flag only that version lacks is refused (exit 2)."""
    env = standin_env(STANDIN_IMAGE_ENGINE=engine, STANDIN_ENGINE_VERSION=version, STANDIN_FLAG_DUMP=dump)
    ours = {f for e in flags.flag_dump.load_dump(os.path.join(REPO, "data", "engine_flags", dump)) for f in e["flags"]}
    others = set()
    for _unused, other, other_dump in (v for v in _table_versions() if v[0] == engine and v[1] != version):
        others |= {f for e in flags.flag_dump.load_dump(os.path.join(REPO, "data", "engine_flags", other_dump))
                   for f in e["flags"]}
    missing = sorted(f for f in others - ours if f.startswith("--"))
    if missing:
        done = subprocess.run(command(engine, model, [missing[0]]), env=env, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2 and "unrecognized arguments: %s" % missing[0] in done.stderr, done.stderr
    cli = [os.path.join(STANDIN_DIR, "bin", engine)] + (["--version"] if engine == "vllm" else ["version"])
    shown = subprocess.run([sys.executable, *cli], env=env, capture_output=True, text=True, timeout=30, check=False).stdout
    assert shown.strip() == (version if engine == "vllm" else "sglang version: " + version)
    other = "sglang" if engine == "vllm" else "vllm"
    done = subprocess.run(command(other, model), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 127 and "stands in for %s %s" % (engine, version) in done.stderr  # not in this image
    image_env = {k: env[k] for k in ("STANDIN_IMAGE_ENGINE", "STANDIN_ENGINE_VERSION", "STANDIN_FLAG_DUMP")}
    with StandIn(engine, model, ["--api-key", KEY], **image_env) as server:
        server.wait_ready()
        path = "/version" if engine == "vllm" else "/get_server_info"
        assert requests.get(server.url + path, headers=bearer(), timeout=5).json()["version"] == version


def test_labctl_tags_the_standin_as_the_planners_image_of_every_table_version():
    """lab/labctl.py reads the table (no hard-coded names): the image the planner picks for a version is
    the stand-in of that version."""
    sys.path.insert(0, os.path.join(REPO, "lab"))
    import labctl
    kn = knowledge.load_knowledge()
    expected = sorted((engine_plan.image_ref(e, v, knowledge=kn), e, v, dump) for e, v, dump in _table_versions())
    assert sorted(labctl.standin_images(labctl.load_knowledge())) == expected
    assert len(expected) >= 2


@pytest.mark.parametrize("engine, args, error", [
    ("sglang", ["--enable-flashinfer"], "unrecognized arguments: --enable-flashinfer"),  # a prefix the real one accepts
    ("sglang", ["--disable-flashinfer"], "unrecognized arguments: --disable-flashinfer"),  # removed in 0.4.x
    ("sglang", ["--torchao-config", "x"], "unrecognized arguments: --torchao-config x"),  # removed in 0.5.18
    ("sglang", ["--cuda-graph-max-bs", "8"], "unrecognized arguments: --cuda-graph-max-bs 8"),
    ("sglang", ["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    ("sglang", ["--tp-size", "two"], "argument --tp-size/--tensor-parallel-size: invalid int value: 'two'"),
    # flag_dump passes the form; SGLang's converter knows only k/M/G/T and Ki/Mi/Gi/Ti
    ("sglang", ["--context-length", "32K"], "argument --context-length: invalid human_readable_int value: '32K'"),
    ("vllm", ["--swap-space", "4"], "unrecognized arguments: --swap-space 4"),  # removed in 0.20
    ("vllm", ["--enable-flashinfer"], "unrecognized arguments: --enable-flashinfer"),
    ("vllm", ["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    ("vllm", ["--max-model-len", "lots"], "argument --max-model-len: invalid human_readable_int_or_auto value: 'lots'"),
])
def test_refuses_what_the_pinned_parser_refuses_with_exit_2(model, engine, args, error):
    rc, stderr = run_once(engine, model, args)
    assert rc == 2
    assert error in stderr
    assert stderr.startswith("usage: ")  # a short usage line, then the error, as argparse prints them


def test_sglang_serve_without_a_model_path_is_a_usage_error():
    done = subprocess.run([sys.executable, os.path.join(STANDIN_DIR, "bin", "sglang"), "serve"],
                          env=standin_env(), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "required: --model-path" in done.stderr


@pytest.mark.parametrize("engine, message", [
    ("sglang", "Can't load the configuration of"),
    ("vllm", "Invalid repository ID or local directory specified"),
])
def test_refuses_a_model_dir_without_config_json(tmp_path, engine, message):
    rc, stderr = run_once(engine, make_model(tmp_path / "m", config=False))
    assert rc == 1
    assert message in stderr


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_refuses_a_model_dir_without_weights(tmp_path, engine):
    path = make_model(tmp_path / "m", weights=False)
    rc, stderr = run_once(engine, path)
    assert rc == 1
    assert "Cannot find any model weights with `%s`" % path in stderr


def _health_codes(url, seconds):
    codes, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            code = requests.get(url + "/health", timeout=2).status_code
        except requests.ConnectionError:
            code = None
        if not codes or codes[-1] != code:
            codes.append(code)
        if code == 200:
            break
        time.sleep(0.05)
    return codes


def test_sglang_refuses_connections_while_loading_then_503_while_warming_then_200(model):
    with StandIn("sglang", model, STANDIN_LOAD_SECONDS="0.5", STANDIN_WARMUP_SECONDS="1") as server:
        assert _health_codes(server.url, 10) == [None, 503, 200]
        out, _unused = server.stop()
    assert "The server is fired up and ready to roll!" in out


def test_vllm_refuses_connections_until_loaded_then_200_without_503(model):
    with StandIn("vllm", model, STANDIN_LOAD_SECONDS="0.5") as server:
        assert _health_codes(server.url, 10) == [None, 200]


def test_sglang_models_auth_and_exempt_paths(model):
    with StandIn("sglang", model, ["--served-model-name", "qwen3", "--api-key", KEY, "--enable-metrics"]) as server:
        server.wait_ready()
        url = server.url
        denied = requests.get(url + "/v1/models", timeout=5)
        assert (denied.status_code, denied.json()) == (401, {"error": "Unauthorized"})
        assert requests.get(url + "/v1/models", headers=bearer("wrong"), timeout=5).status_code == 401
        assert requests.get(url + "/model_info", timeout=5).status_code == 401  # only probes/scrapes are exempt
        for path in ("/health", "/health_generate", "/metrics"):
            assert requests.get(url + path, timeout=5).status_code == 200, path
        cards = requests.get(url + "/v1/models", headers=bearer(), timeout=5).json()
        assert cards["object"] == "list"
        assert [(c["id"], c["owned_by"], c["max_model_len"]) for c in cards["data"]] == [("qwen3", "sglang", 40960)]
        info = requests.get(url + "/server_info", headers=bearer(), timeout=5).json()
        assert info["version"] == "0.5.23"
        assert info["api_key"] == "<redacted>"
        model_info = requests.get(url + "/get_model_info", headers=bearer(), timeout=5).json()
        assert (model_info["served_model_name"], model_info["model_type"]) == ("qwen3", "qwen3")
        out, err = server.stop()
    assert '"GET /v1/models HTTP/1.1" 401 Unauthorized' in out
    assert '"GET /v1/models HTTP/1.1" 200 OK' in out
    assert KEY not in out + err


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_api_key_from_config_file_never_on_argv(model, engine, tmp_path):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(json.dumps({"api-key": KEY}))
    with StandIn(engine, model, ["--config", str(secrets)]) as server:
        server.wait_ready()
        assert requests.get(server.url + "/v1/models", timeout=5).status_code == 401
        assert requests.get(server.url + "/v1/models", headers=bearer(), timeout=5).status_code == 200
        out, err = server.stop()
    assert KEY not in out + err


def test_config_file_keys_are_checked_like_flags(model, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("torchao-config: int4wo-64\n")
    proc = subprocess.run(command("sglang", model, ["--config", str(bad)], port=free_port()), env=standin_env(),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "--torchao-config" in proc.stderr


def test_vllm_key_from_env_guards_only_v1_and_cli_key_wins(model):
    with StandIn("vllm", model, ["--served-model-name", "qwen3", "q3"], VLLM_API_KEY=KEY) as server:
        server.wait_ready()
        url = server.url
        denied = requests.get(url + "/v1/models", timeout=5)
        assert (denied.status_code, denied.json()) == (401, {"error": "Unauthorized"})
        for path in ("/health", "/version", "/metrics"):
            assert requests.get(url + path, timeout=5).status_code == 200, path
        assert requests.get(url + "/version", timeout=5).json() == {"version": "0.33.0"}
        cards = requests.get(url + "/v1/models", headers=bearer(), timeout=5).json()["data"]
        assert [(c["id"], c["owned_by"], c["root"]) for c in cards] == [("qwen3", "vllm", model), ("q3", "vllm", model)]
        assert cards[0]["permission"][0]["object"] == "model_permission"
    with StandIn("vllm", model, ["--api-key", "cli-key"], VLLM_API_KEY=KEY) as server:
        server.wait_ready()
        assert requests.get(server.url + "/v1/models", headers=bearer(), timeout=5).status_code == 401
        cards = requests.get(server.url + "/v1/models", headers=bearer("cli-key"), timeout=5).json()["data"]
        assert [c["id"] for c in cards] == [model]  # no --served-model-name: the model path


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_chat_completion_shape(model, engine):
    with StandIn(engine, model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        body = chat(server.wait_ready().url, "qwen3").json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen3"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_streaming_sends_role_deltas_usage_and_done(model, engine):
    with StandIn(engine, model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        resp = chat(server.wait_ready().url, "qwen3", stream=True, max_tokens=40)
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in resp.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"] and c["choices"][0]["delta"]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # the canned answer ends before 40 tokens
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(contents) > 1


def test_unknown_model_vllm_404_sglang_echoes(model):
    with StandIn("vllm", model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        resp = chat(server.wait_ready().url, "llama")
    assert resp.status_code == 404
    assert resp.json() == {"error": {"message": "The model `llama` does not exist. Valid aliases: qwen3.",
                                     "type": "NotFoundError", "param": "model", "code": 404}}
    with StandIn("sglang", model, ["--served-model-name", "qwen3", "--api-key", KEY]) as server:
        resp = chat(server.wait_ready().url, "llama")
    assert (resp.status_code, resp.json()["model"]) == (200, "llama")  # SGLang does not check the name


def test_vllm_metrics_count_real_traffic(model):
    with StandIn("vllm", model, ["--served-model-name", "qwen3"]) as server:
        url = server.wait_ready().url
        before = requests.get(url + "/metrics", timeout=5).text
        assert metric(before, "vllm:generation_tokens_total", model_name="qwen3") == 0
        chat(url, "qwen3", max_tokens=5)
        chat(url, "qwen3", stream=True, max_tokens=3).content
        after = requests.get(url + "/metrics", timeout=5).text
    assert metric(after, "vllm:generation_tokens_total", model_name="qwen3", engine="0") == 8
    assert metric(after, "vllm:request_success_total", finished_reason="length") == 2
    assert metric(after, "vllm:time_to_first_token_seconds_count") == 2
    assert metric(after, "vllm:num_requests_running") == 0
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in after
    assert 'vllm:time_to_first_token_seconds_bucket{model_name="qwen3",engine="0",le="+Inf"} 2.0' in after


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_is_counted_before_its_last_bytes_leave(model, monkeypatch, stream):
    """A /metrics read right after the reply must see it (the flake: 5 tokens counted of 8)."""
    from standin import server as standin_server
    counted_at_last_write = []

    def snapshot(handler):
        counted_at_last_write.append(metric(handler.server.metrics.render(), "vllm:generation_tokens_total"))

    real_sse, real_json = standin_server.Handler._sse, standin_server.Handler._json
    monkeypatch.setattr(standin_server.Handler, "_sse",
                        lambda self, obj: (obj == b"[DONE]" and snapshot(self), real_sse(self, obj)))
    monkeypatch.setattr(standin_server.Handler, "_json",
                        lambda self, status, obj: (snapshot(self), real_json(self, status, obj)))
    cfg = standin_server.Config(
        engine="vllm", version=flags.DEFAULT_VERSIONS["vllm"], model_path=model, served_names=["qwen3"],
        host="127.0.0.1", port=free_port(), api_keys=[], metrics_route=True, engine_metrics=True,
        context_len=4096, model_config={}, server_args={}, load_s=0, warmup_s=0, token_delay_s=0)
    server = standin_server.StandinServer(cfg)
    server.server_bind()
    server.server_activate()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chat("http://127.0.0.1:%d" % cfg.port, "qwen3", stream=stream, max_tokens=3).content
    finally:
        server.shutdown()
        server.server_close()
    assert counted_at_last_write == [3]


def test_sglang_metrics_only_with_enable_metrics(model):
    with StandIn("sglang", model) as server:
        assert requests.get(server.wait_ready().url + "/metrics", timeout=5).status_code == 404
    with StandIn("sglang", model, ["--enable-metrics", "--served-model-name", "qwen3"], cli=True) as server:
        url = server.wait_ready().url
        chat(url, "qwen3", max_tokens=4)
        requests.post(url + "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}}, timeout=10)
        text = requests.get(url + "/metrics", timeout=5).text
    assert metric(text, "sglang:generation_tokens_total", model_name="qwen3", is_streaming="false") == 6
    assert metric(text, "sglang:num_requests_total") == 2
    assert "vllm:" not in text


def test_token_delay_paces_the_stream(model):
    with StandIn("vllm", model, STANDIN_TOKEN_DELAY_MS="40") as server:
        url = server.wait_ready().url
        start = time.monotonic()
        chat(url, model, max_tokens=10)
        assert 0.4 <= time.monotonic() - start < 2.0


def test_sglang_generate_native_api(model):
    with StandIn("sglang", model) as server:
        out = requests.post(server.wait_ready().url + "/generate",
                            json={"text": "hi", "sampling_params": {"max_new_tokens": 3}}, timeout=10).json()
    assert len(out["text"].split()) == 3
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    assert out["meta_info"]["completion_tokens"] == 3


# -- image requests (issue 13): the stand-in refuses a malformed image part the way the engines do ----------
def make_vl_model(root):
    """A model dir whose config.json is the real Qwen2.5-VL-7B-Instruct one (it has a vision_config)."""
    path = make_model(root)
    with open(os.path.join(REPO, "tests", "fixtures", "models", "Qwen2.5-VL-7B-Instruct", "config.json")) as src:
        config = src.read()
    with open(os.path.join(path, "config.json"), "w") as dst:
        dst.write(config)
    return path


def image_chat(url, parts, key=KEY):
    body = {"model": "vl", "max_tokens": 4, "messages": [{"role": "user", "content": parts}]}
    return requests.post(url + "/v1/chat/completions", json=body, headers=bearer(key), timeout=10)


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_image_requests_are_checked_like_the_engines_do(tmp_path, engine):
    from ansible_collections.gpufleet.serving.plugins.module_utils import engine_http
    good = engine_http.image_message()["content"]
    url = good[0]["image_url"]["url"]
    bad = {
        "no url": [{"type": "image_url", "image_url": {}}],
        "no comma": [{"type": "image_url", "image_url": {"url": "data:image/png;base64"}}],
        "not base64": [{"type": "image_url", "image_url": {"url": url.replace(";base64", "")}}],
        "broken base64": [{"type": "image_url", "image_url": {"url": url[:-3] + "!!!"}}],
        "not an image": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}],
        "unknown part": [{"type": "image", "image": url}],
    }
    with StandIn(engine, make_vl_model(tmp_path / "vl"), ["--served-model-name", "vl", "--api-key", KEY]) as vl:
        vl.wait_ready()
        ok = image_chat(vl.url, good)
        refused = {name: image_chat(vl.url, parts) for name, parts in bad.items()}
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] == 4
    for name, resp in refused.items():
        assert resp.status_code == 400, name
    assert "missing ',' separator" in refused["no comma"].text
    assert "Only base64 data URLs" in refused["not base64"].text
    with StandIn(engine, make_model(tmp_path / "text"), ["--served-model-name", "vl", "--api-key", KEY]) as text:
        text.wait_ready()
        resp = image_chat(text.url, good)
    assert resp.status_code == 400 and "not a multimodal model" in resp.text
