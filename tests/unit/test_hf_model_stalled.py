"""gpufleet.serving.hf_model against a hub that stalls or fails: every call is bounded by the module's
`timeout` and the message names the server, the timeout, the HTTP status and the file.

A relay in front of the lab Hugging Face server passes the metadata through and, per test, answers file
downloads with nothing (a stalled mirror) or with a 500; a bare socket that accepts and never answers
stands for a hub whose metadata call hangs."""
import http.server
import socket
import threading
import time
import urllib.request

import pytest
from test_hf_model import MAIN, run_module

from fixtures.hf_server import hf_repos, hf_server  # noqa: F401 (pytest fixtures, used by name)  # pylint: disable=unused-import


@pytest.fixture()
def silent_socket():
    """A server that accepts connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield "http://127.0.0.1:%d" % listener.getsockname()[1]
    listener.close()


def relay(upstream, on_file):
    """An HTTP server that forwards everything to `upstream` except file downloads (/resolve/), which
    `on_file(handler)` answers. Returns (endpoint, stop)."""
    class Relay(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            if "/resolve/" in self.path:
                return on_file(self)
            request = urllib.request.Request(upstream + self.path, method=self.command,
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            try:
                response = urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as err:
                response = err
            body = response.read()
            self.send_response(response.status if hasattr(response, "status") else response.code)
            for key, value in response.headers.items():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_HEAD = _forward

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d" % server.server_address[1], server.shutdown


def stall(handler):
    time.sleep(30)  # longer than any test waits: the client's timeout must end it


def server_error(handler):
    handler.send_response(500)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


class Hub:
    endpoint = None


@pytest.mark.parametrize("state", ["resolved", "present"])
def test_a_hub_that_never_answers_fails_after_the_timeout_naming_it(silent_socket, tmp_path, state):
    hub = Hub()
    hub.endpoint = silent_socket
    start = time.monotonic()
    result = run_module(hub, tmp_path, repo_id=MAIN, revision="main", path=str(tmp_path / "m"), state=state,
                        timeout=1)
    assert time.monotonic() - start < 20
    assert result["failed"]
    assert "%s did not answer within 1 s" % silent_socket in result["msg"], result["msg"]
    assert "model_fetch_hub_timeout" in result["msg"]


def test_a_stalled_file_download_fails_after_the_timeout(hf_server, tmp_path):  # noqa: F811
    endpoint, stop = relay(hf_server.endpoint, stall)
    try:
        hub = Hub()
        hub.endpoint = endpoint
        start = time.monotonic()
        result = run_module(hub, tmp_path, repo_id=MAIN, revision="main", path=str(tmp_path / "m"), timeout=2)
    finally:
        stop()
    assert time.monotonic() - start < 60  # a few files at 2 s each, not the relay's 30 s per file
    assert result["failed"] and "did not answer within 2 s" in result["msg"], result["msg"]


def test_a_500_on_a_file_names_the_status_and_the_file(hf_server, tmp_path):  # noqa: F811
    endpoint, stop = relay(hf_server.endpoint, server_error)
    try:
        hub = Hub()
        hub.endpoint = endpoint
        result = run_module(hub, tmp_path, repo_id=MAIN, revision="main", path=str(tmp_path / "m"), timeout=5)
    finally:
        stop()
    assert result["failed"] and "HTTP 500 from the server for /%s/resolve/" % MAIN in result["msg"], result["msg"]
