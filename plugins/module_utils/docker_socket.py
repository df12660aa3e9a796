# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Read container state straight from the Docker socket (stdlib only).

One GET per container over the local socket costs milliseconds; the docker CLI costs a process
start each. Used by the converge stamp, which must stay cheap on every run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
from http.client import HTTPConnection
from urllib.parse import quote

DOCKER_SOCKET = "/var/run/docker.sock"


class _UnixHTTPConnection(HTTPConnection):
    def __init__(self, path, timeout):
        HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def inspect_container(name, socket_path=DOCKER_SOCKET, timeout=10):
    """The Engine API's container inspect document, or None when no such container exists.
    Raises OSError when the daemon cannot be reached."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/containers/%s/json" % quote(name, safe=""))
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise OSError("docker inspect %s: HTTP %s %s" % (name, resp.status, body[:200]))
    return json.loads(body.decode("utf-8"))


def container_fingerprints(names, socket_path=DOCKER_SOCKET, timeout=10):
    """{name: {id, image, running, restart_count} | None}: what says the container is the same one."""
    result = {}
    for name in names:
        try:
            doc = inspect_container(name, socket_path, timeout)
        except (OSError, ValueError):
            doc = None  # no daemon: as good as gone
        result[name] = None if doc is None else {
            "id": doc.get("Id"),
            "image": doc.get("Image"),
            "running": bool((doc.get("State") or {}).get("Running")),
            "restart_count": doc.get("RestartCount", 0),
        }
    return result
