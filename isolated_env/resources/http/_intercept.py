"""``isolated_http(intercept=True)``: code that builds its own clients reaches routed hosts too.

While at least one intercepting server is open, this process is patched, and every patch is undone
when the last one closes:

- ``socket.getaddrinfo`` resolves a routed host to the server's address (port included), so any
  client that resolves then connects (requests/urllib3, aiohttp, httpx's sync client) reaches the
  server over a real socket; a host neither routed, loopback nor allowed is refused (the network
  guard), and recorded as a problem of the server that refused it;
- ``httpx.Client`` and ``httpx.AsyncClient`` are built with the routing transport around the one they
  would have had (httpx's async client connects through anyio, which keeps the original port);
- with TLS, clients that trust the system's authorities by default trust the test CA too: httpx's
  and aiohttp's default contexts become the CA bundle, and ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``
  point at it (requests reads them per request).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ._routes import AsyncRouter, Router, Routes, transport_options

__all__ = ["active_routes", "intercepting", "real_getaddrinfo"]

_lock = threading.Lock()
_active: list[tuple[Routes, ssl.SSLContext | None, str | None]] = []
_undo: list[Callable[[], None]] = []


_real_getaddrinfo = socket.getaddrinfo


def real_getaddrinfo(host: str, port: int) -> str:
    """``host``'s first address as the system resolves it, past any routing (for a recorder that
    forwards a routed host to the real one)."""
    return str(_real_getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][4][0])


def active_routes() -> list[Routes]:
    return [routes for routes, _, _ in _active]


def _bundle() -> tuple[ssl.SSLContext | None, str | None]:
    for _, context, path in _active:
        if context is not None:
            return context, path
    return None, None


@contextlib.contextmanager
def intercepting(routes: Routes, bundle: ssl.SSLContext | None, bundle_path: str | None) -> Iterator[None]:
    """Route through ``routes`` (and guard the network) in this whole process while the block runs."""
    entry = (routes, bundle, bundle_path)
    with _lock:
        _active.append(entry)
        if len(_active) == 1:
            _install()
        elif bundle is not None and not any(c is not None for _, c, _ in _active[:-1]):
            _install_trust()
    try:
        yield
    finally:
        with _lock:
            _active.remove(entry)
            if not _active:
                while _undo:
                    _undo.pop()()


def _patch(owner: Any, name: str, value: Any) -> None:
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    _undo.append(lambda: setattr(owner, name, original))


def _install() -> None:
    global _real_getaddrinfo
    original = _real_getaddrinfo = socket.getaddrinfo

    @functools.wraps(original)
    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None:
            all_routes = active_routes()
            for routes in all_routes:
                if routes.routed(name):
                    return original("127.0.0.1", routes.target.port, socket.AF_INET, type, proto, flags)
            if all_routes and not any(routes.permitted(name) for routes in all_routes):
                raise socket.gaierror(socket.EAI_NONAME, all_routes[0].refuse(name))
        return original(host, port, family, type, proto, flags)

    _patch(socket, "getaddrinfo", getaddrinfo)
    async_init = _client_init(httpx.AsyncClient.__init__, AsyncRouter, httpx.AsyncHTTPTransport)
    _patch(httpx.AsyncClient, "__init__", async_init)
    _patch(httpx.Client, "__init__", _client_init(httpx.Client.__init__, Router, httpx.HTTPTransport))
    if _bundle()[0] is not None:
        _install_trust()


def _client_init(original: Any, router: Any, default: Any) -> Any:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        inner = kwargs.pop("transport", None)
        if inner is None:
            options = transport_options(kwargs)
            bundle, _ = _bundle()
            if "verify" not in options and bundle is not None:
                options["verify"] = bundle
            inner = default(**options)
        original(self, *args, transport=router(active_routes, inner), **kwargs)

    return __init__


def _install_trust() -> None:
    _, path = _bundle()
    assert path is not None
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        before = os.environ.get(variable)
        os.environ[variable] = path
        _undo.append(functools.partial(_restore, variable, before))
    if importlib.util.find_spec("aiohttp") is None:
        return
    import aiohttp

    original = aiohttp.TCPConnector.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, ssl: Any = True, **kwargs: Any) -> None:
        if ssl is True:  # aiohttp's default: the system's authorities, from a context made at import
            ssl = _bundle()[0] or True
        original(self, *args, ssl=ssl, **kwargs)

    _patch(aiohttp.TCPConnector, "__init__", __init__)


def _restore(variable: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = value
