"""docker_socket over open_url(unix_socket=...): a fake Docker daemon on a unix socket answers the inspect
calls; what the converge stamp gets for a container, a missing one, a daemon error, no daemon and a hung one."""
import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from ansible_collections.gpufleet.serving.plugins.module_utils import docker_socket

CONTAINERS = {"engine-0": {"Id": "abc123", "Image": "sha256:1", "State": {"Running": True}, "RestartCount": 2}}


class _Daemon(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        name = self.path[len("/containers/"):-len("/json")]
        if name == "hung":
            time.sleep(3)
        if name == "broken":
            code, body = 500, {"message": "daemon in trouble"}
        elif name in CONTAINERS:
            code, body = 200, CONTAINERS[name]
        else:
            code, body = 404, {"message": "No such container: %s" % name}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):  # a unix socket peer has no (host, port)
        return "docker-client"

    def log_message(self, *args):
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the hung request's client has given up by the time it answers


@pytest.fixture
def daemon(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = _UnixServer(path, _Daemon)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, server
    server.shutdown()
    server.server_close()


def test_inspect_reads_the_container_document_over_the_socket(daemon):
    path, server = daemon
    assert docker_socket.inspect_container("engine-0", socket_path=path)["Id"] == "abc123"
    assert docker_socket.inspect_container("gone", socket_path=path) is None
    # The name is quoted into the path: it cannot reach another endpoint.
    assert docker_socket.inspect_container("../info", socket_path=path) is None
    assert server.paths[-1] == "/containers/..%2Finfo/json"


def test_a_daemon_error_is_an_oserror_naming_the_container_and_status(daemon):
    path, _server = daemon
    with pytest.raises(OSError, match=r"docker inspect broken: HTTP 500 .*daemon in trouble"):
        docker_socket.inspect_container("broken", socket_path=path)


def test_fingerprints_of_present_missing_and_unreachable(daemon, tmp_path):
    path, _server = daemon
    assert docker_socket.container_fingerprints(["engine-0", "gone"], socket_path=path) == {
        "engine-0": {"id": "abc123", "image": "sha256:1", "running": True, "restart_count": 2}, "gone": None}
    with pytest.raises(OSError):
        docker_socket.inspect_container("engine-0", socket_path=str(tmp_path / "no-daemon.sock"))
    assert docker_socket.container_fingerprints(["engine-0"], socket_path=str(tmp_path / "no-daemon.sock")) == {
        "engine-0": None}


def test_a_hung_daemon_costs_the_timeout_not_more(daemon):
    path, _server = daemon
    start = time.monotonic()
    assert docker_socket.container_fingerprints(["hung"], socket_path=path, timeout=0.5) == {"hung": None}
    assert time.monotonic() - start < 2.5
