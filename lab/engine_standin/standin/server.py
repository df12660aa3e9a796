"""The HTTP side of the stand-in: startup timing, auth, routes and streaming.

Startup mirrors the real servers (checked against 0.5.23 / 0.33.0 source):
* SGLang loads the model first and only then starts uvicorn (http_server.launch_server ->
  Engine._launch_subprocesses waits for the scheduler); while the warmup request runs,
  /health and /health_generate answer 503 (ServerStatus.Starting).
* vLLM binds its socket before the engine loads (launchers/launcher.create_server_socket)
  but listens only when uvicorn starts after engine init: connections are refused until then.
"""
import dataclasses
import hmac
import json
import signal
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from . import openai
from .metrics import EngineMetrics
from .openai import RequestError

# sglang/srt/utils/auth.py: probes and scrapes never need the key.
SGLANG_OPEN_PREFIXES = ("/health", "/ready", "/metrics")
# vllm/entrypoints/serve/middleware/authenticate.py GUARDED_PREFIX: only these need it.
VLLM_GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


@dataclasses.dataclass
class Config:
    engine: str
    version: str
    model_path: str
    served_names: list
    host: str
    port: int
    api_keys: list
    metrics_route: bool  # SGLang mounts /metrics only with --enable-metrics; vLLM always
    engine_metrics: bool  # vLLM drops its vllm:* metrics with --disable-log-stats
    context_len: int
    model_config: dict
    server_args: dict  # parsed flags with secrets redacted, for SGLang /server_info
    load_s: float = 2.0
    warmup_s: float = 1.0
    token_delay_s: float = 0.01


def log(message, stream=sys.stdout):
    print(message, file=stream, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        """Silenced: one uvicorn-style access line per request is written in _handle."""

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_OPTIONS(self):
        self._handle("OPTIONS")

    # -- plumbing ---------------------------------------------------------------------
    @property
    def cfg(self):
        return self.server.cfg

    def _handle(self, method):
        self.status = 500
        # Always drain the body so a keep-alive connection stays in sync after an early reply.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        try:
            if method == "OPTIONS":  # CORS preflight: both engines answer it without auth
                self._send(200, b"", "text/plain")
            elif not self._authorized(path):
                self._json(401, {"error": "Unauthorized"})
            else:
                methods = self.server.routes.get(path)
                if methods is None:
                    self._json(404, {"detail": "Not Found"})
                elif method not in methods:
                    self._json(405, {"detail": "Method Not Allowed"})
                else:
                    methods[method](self)
        except RequestError as err:
            self._json(err.status, openai.error_body(self.cfg.engine, err))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        host, port = self.client_address[:2]
        phrase = HTTPStatus(self.status).phrase
        log(f'INFO:     {host}:{port} - "{method} {self.path} HTTP/1.1" {self.status} {phrase}')

    def _authorized(self, path):
        keys = self.cfg.api_keys
        if not keys:
            return True
        if self.cfg.engine == "sglang" and path.startswith(SGLANG_OPEN_PREFIXES):
            return True
        if self.cfg.engine == "vllm" and not path.startswith(VLLM_GUARDED_PREFIXES):
            return True
        scheme, _unused, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and any(hmac.compare_digest(token, key) for key in keys)

    def _send(self, status, payload, content_type):
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status, obj):
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _json_body(self):
        engine = self.cfg.engine
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if engine == "sglang" and content_type != "application/json":  # http_server.validate_json_request
            raise openai.bad_request(engine, "Unsupported Media Type: Only 'application/json' is allowed")
        try:
            body = json.loads(self.body or b"null")
        except ValueError as exc:
            raise openai.bad_request(engine, f"JSON decode error: {exc}") from None
        if not isinstance(body, dict):
            raise openai.bad_request(engine, "request body must be a JSON object")
        return body

    def _start_sse(self):
        self.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _sse(self, obj):
        data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode("utf-8")) + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_sse(self):
        self._sse(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _tokens(self, tokens):
        """Yield tokens at the configured pace so TTFT and tok/s are measurable."""
        for token in tokens:
            time.sleep(self.cfg.token_delay_s)
            yield token

    # -- shared routes ----------------------------------------------------------------
    def health(self):
        warming = self.cfg.engine == "sglang" and not self.server.warmed.is_set()
        self._send(503 if warming else 200, b"", "text/plain")

    def metrics(self):
        text = self.server.metrics.render() if self.cfg.engine_metrics else ""
        self._send(200, text.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")

    def models(self):
        cfg = self.cfg
        self._json(200, openai.model_list(cfg.engine, cfg.served_names, cfg.model_path, cfg.context_len))

    def _model_for(self, body):
        """vLLM refuses names it does not serve (serve/engine/serving.py _check_model);
        SGLang does not check and echoes the request's name (default "default")."""
        requested = body.get("model")
        names = self.cfg.served_names
        if self.cfg.engine == "sglang":
            return requested or "default"
        if requested and requested not in names:
            raise RequestError(404, f"The model `{requested}` does not exist. Valid aliases: {', '.join(names)}.",
                               "NotFoundError", "model")
        return names[0]

    def _inference(self, kind):
        engine = self.cfg.engine
        body = self._json_body()
        model = self._model_for(body)
        if kind == "chat":
            openai.check_content_parts(engine, body, bool(self.cfg.model_config.get("vision_config")))
        prompt, prompt_tokens = openai.prompt_of(kind, body, engine)
        default_max = None if kind == "chat" else 16  # OpenAI default for /v1/completions
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens", default_max)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise openai.bad_request(engine, "max_tokens must be a positive integer")
        tokens, finish = openai.answer_tokens(prompt, max_tokens)
        stream = bool(body.get("stream"))
        rid, created = openai.new_id(engine, kind), int(time.time())
        with self.server.metrics.request(prompt_tokens, finish, stream) as record:
            sent = record.sent
            if stream:
                self._start_sse()
                if kind == "chat":
                    self._sse(openai.stream_chunk(engine, kind, rid, model, created, role=True))
            for token in self._tokens(tokens):
                record.token(token)
                if stream:
                    self._sse(openai.stream_chunk(engine, kind, rid, model, created, text=token))
            record.done()
            if not stream:
                self._json(200, openai.full_response(engine, kind, rid, model, "".join(sent), finish,
                                                     prompt_tokens, len(sent)))
                return
            self._sse(openai.stream_chunk(engine, kind, rid, model, created, finish_reason=finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                self._sse(openai.usage_chunk(engine, kind, rid, model, created, prompt_tokens, len(sent)))
            self._end_sse()

    def chat(self):
        self._inference("chat")

    def completions(self):
        self._inference("completion")

    # -- SGLang native routes ---------------------------------------------------------
    def generate(self):
        """/generate: cumulative text per streamed chunk, meta_info like tokenizer_manager's."""
        body = self._json_body()
        prompt, prompt_tokens = openai.prompt_of("completion", body, "sglang")
        max_new = (body.get("sampling_params") or {}).get("max_new_tokens", 128)
        tokens, finish = openai.answer_tokens(prompt, max_new)
        rid, stream = openai.new_id("sglang", "generate"), bool(body.get("stream"))

        def result():
            sent = record.sent
            reason = {"type": "length", "length": len(sent)} if finish == "length" else {"type": "stop", "matched": 2}
            done = len(sent) == len(tokens)
            return {"text": "".join(sent), "output_ids": list(range(len(sent))),
                    "meta_info": {"id": rid, "finish_reason": reason if done else None,
                                  "prompt_tokens": prompt_tokens, "completion_tokens": len(sent),
                                  "cached_tokens": 0, "e2e_latency": time.monotonic() - record.t0}}
        with self.server.metrics.request(prompt_tokens, finish, stream) as record:
            if stream:
                self._start_sse()
            for token in self._tokens(tokens):
                record.token(token)
                if stream:
                    self._sse(result())
            record.done()
            if stream:
                self._end_sse()
            else:
                self._json(200, result())

    def model_info(self):
        cfg, args = self.cfg, self.cfg.server_args
        self._json(200, {
            "model_path": cfg.model_path, "served_model_name": cfg.served_names[0],
            "tokenizer_path": args.get("tokenizer_path") or cfg.model_path, "is_generation": True,
            "preferred_sampling_params": args.get("preferred_sampling_params"), "weight_version": "default",
            "load_format": args.get("load_format"), "reasoning_parser": args.get("reasoning_parser"),
            "tool_call_parser": args.get("tool_call_parser"), "disaggregation_mode": "null",
            "has_image_understanding": bool(cfg.model_config.get("vision_config")), "has_audio_understanding": False,
            "model_type": cfg.model_config.get("model_type"),
            "architectures": cfg.model_config.get("architectures")})

    def server_info(self):
        self._json(200, {**self.cfg.server_args, "startup_time": self.server.startup_time,
                         "internal_states": [{}], "version": self.cfg.version, "frontend": "python"})

    # -- vLLM routes ------------------------------------------------------------------
    def version(self):
        self._json(200, {"version": self.cfg.version})


def routes_for(cfg):
    def get(fn):
        return {"GET": fn}

    routes = {
        "/health": get(Handler.health),
        "/v1/models": get(Handler.models),
        "/v1/chat/completions": {"POST": Handler.chat},
        "/v1/completions": {"POST": Handler.completions},
    }
    if cfg.metrics_route:
        routes["/metrics"] = get(Handler.metrics)
    if cfg.engine == "sglang":
        routes.update({
            "/health_generate": get(Handler.health),
            "/generate": {"POST": Handler.generate, "PUT": Handler.generate},
            "/model_info": get(Handler.model_info), "/get_model_info": get(Handler.model_info),
            "/server_info": get(Handler.server_info), "/get_server_info": get(Handler.server_info),
        })
    else:
        routes["/version"] = get(Handler.version)
    return routes


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, cfg):
        self.address_family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        super().__init__((cfg.host, cfg.port), Handler, bind_and_activate=False)
        self.cfg = cfg
        self.routes = routes_for(cfg)
        self.metrics = EngineMetrics(cfg.engine, cfg.served_names[0])
        # SGLang's /health answers 503 until its warmup request is done, which it logs as "fired up":
        # one event for both, so a probe never sees 200 before the line is in the log.
        self.warmed = threading.Event()
        self.startup_time = 0.0


def _stop(signum, frame):
    raise SystemExit(0)  # PID 1 in a container ignores SIGTERM unless handled: `docker stop` must be quick


def serve(cfg):
    signal.signal(signal.SIGTERM, _stop)
    name = {"sglang": "SGLang", "vllm": "vLLM"}[cfg.engine]
    log(f"[standin] TEST DOUBLE of {name} {cfg.version}: no GPU, no real model. "
        f"Loading {cfg.model_path} for {cfg.load_s:g}s")
    started = time.monotonic()
    server = StandinServer(cfg)
    try:
        if cfg.engine == "vllm":
            server.server_bind()
        time.sleep(cfg.load_s)
        if cfg.engine == "sglang":
            server.server_bind()
        server.server_activate()
    except OSError as exc:
        log(f"ERROR:    [Errno {exc.errno}] error while attempting to bind on address "
            f"({cfg.host!r}, {cfg.port}): {exc.strerror}", sys.stderr)
        return 1
    server.startup_time = time.monotonic() - started
    log(f"INFO:     Uvicorn running on http://{cfg.host}:{cfg.port} (Press CTRL+C to quit)")
    if cfg.engine == "sglang":
        def warmed():
            log("The server is fired up and ready to roll!")
            server.warmed.set()
        ready = threading.Timer(cfg.warmup_s, warmed)
        ready.daemon = True
        ready.start()
    else:
        log("INFO:     Application startup complete.")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
