# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""ansible.module_utils.urls.open_url, without a new TLS context for every plain-HTTP request.

open_url builds an SSL context for each request, https or not, and building one loads the system's CA
certificates: about 20 ms of CPU, most of the cost of a request to a local server. Engines, routers and
Docker's socket are spoken to in plain HTTP, many times a second (health gates, drains, the rollout load),
so a plain-HTTP request gets one context made once per process, which it never uses. It is a client context
with no CA loaded: if a server redirected to https, the handshake would fail verification, never pass
unverified. https URLs keep open_url's own context and settings.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.urls import Request

try:
    import ssl
except ImportError:  # a Python built without ssl: open_url copes, and so does this
    ssl = None

_UNUSED_TLS_CONTEXT = []


def open_url(url, data=None, method=None, **kwargs):
    """ansible.module_utils.urls.open_url (same arguments), with a context made once for http:// URLs (see the
    module's docstring). open_url itself takes no context: this calls the Request it wraps, as it does."""
    if ssl is not None and url.startswith("http://"):
        if not _UNUSED_TLS_CONTEXT:
            _UNUSED_TLS_CONTEXT.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        kwargs["context"] = _UNUSED_TLS_CONTEXT[0]
    return Request().open(method or ("POST" if data else "GET"), url, data=data, **kwargs)
