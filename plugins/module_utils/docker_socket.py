# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Read container state straight from the Docker socket (no Docker SDK or CLI on the host).

One GET per container over the local socket costs milliseconds; the docker CLI costs a process
start each. Used by the converge stamp, which must stay cheap on every run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
from urllib.error import HTTPError
from urllib.parse import quote

from ansible_collections.gpufleet.serving.plugins.module_utils.http_open import open_url

DOCKER_SOCKET = "/var/run/docker.sock"


def inspect_container(name, socket_path=DOCKER_SOCKET, timeout=10):
    """The Engine API's container inspect document, or None when no such container exists.
    Raises OSError when the daemon cannot be reached (urllib's errors are OSErrors) or answers
    with an error."""
    # The host part is ignored on a unix socket; the daemon answers any.
    url = "http://localhost/containers/%s/json" % quote(name, safe="")
    try:
        with open_url(url, unix_socket=socket_path, timeout=timeout) as resp:
            body = resp.read()
    except HTTPError as exc:
        if exc.code == 404:
            return None
        raise OSError("docker inspect %s: HTTP %s %s" % (name, exc.code, exc.read()[:200]))
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
