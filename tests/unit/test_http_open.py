"""http_open.open_url: a plain-HTTP request builds no TLS context (open_url's make_context loads the CA store,
~20 ms of CPU per request); https keeps open_url's own context and verification."""
import http.server
import threading

import pytest

from ansible.module_utils import urls
from ansible_collections.gpufleet.serving.plugins.module_utils import http_open


@pytest.fixture
def server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok " + self.command.encode())

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()


def test_plain_http_builds_no_tls_context(server, monkeypatch):
    def no_context(*args, **kwargs):
        raise AssertionError("make_context called for a plain-HTTP request")

    monkeypatch.setattr(urls, "make_context", no_context)
    for _attempt in range(3):
        with http_open.open_url(server + "/x", timeout=5) as resp:
            assert resp.read() == b"ok GET"
    with http_open.open_url(server + "/x", data=b"{}", timeout=5) as resp:  # a body makes it a POST, as open_url
        assert resp.read() == b"ok POST"
    assert len(http_open._UNUSED_TLS_CONTEXT) == 1  # made once per process


def test_https_keeps_open_urls_own_context(monkeypatch):
    made = []

    def record(*args, **kwargs):
        made.append(kwargs)
        raise RuntimeError("stop before connecting")

    monkeypatch.setattr(urls, "make_context", record)
    with pytest.raises(RuntimeError, match="stop before connecting"):
        http_open.open_url("https://127.0.0.1:1/x", timeout=1, validate_certs=True)
    assert made and made[0]["validate_certs"] is True
