"""Hard-coded hosts sent to the isolated server, and the network guard for every other host.

:class:`Routes` says, per host, where a request goes: a routed host (``http.route("api.stripe.com")``)
to the isolated server, loopback and allowed hosts where they are, any other host nowhere (refused,
and recorded as a problem, so a test whose code swallows the error still fails).

The httpx transports here apply it to a request before it leaves: a routed request's URL is pointed
at the server's address while its ``Host`` header and its TLS server name (httpx's ``sni_hostname``
extension) stay the original host, so the server's certificate is checked for that host, over a real
socket. They wrap an inner transport, which does the actual I/O.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from ..._errors import ConfigError
from ..._hosts import is_loopback

__all__ = ["AsyncRouter", "Router", "Routes"]


def _host(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    if not host or "/" in host or (":" in host.strip("[]") and not _is_ip(host.strip("[]"))):
        raise ConfigError(
            f"route({value!r}): give a host name such as 'api.example.com' (or '*.example.com'), "
            "without scheme, port or path"
        )
    return host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def service_hosts() -> list[str]:
    """The hosts of the external services the environment names (``TEST_POSTGRES_HOST``,
    ``TEST_REDIS_URL``, ...): the guard never stands between a test and its databases."""
    hosts = []
    for name, value in os.environ.items():
        if not name.startswith("TEST_") or not value:
            continue
        if name.endswith("_HOST"):
            hosts.append(value.strip().lower())
        elif name.endswith("_URL") and "://" in value:
            try:
                host = httpx.URL(value.split(",")[0]).host
            except (httpx.InvalidURL, ValueError):
                continue
            if host:
                hosts.append(host.lower())
    return hosts


def _matches(host: str, patterns: Iterable[str]) -> bool:
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


class Routes:
    """The hosts routed to one server (``target``, its base URL) and the hosts allowed through."""

    def __init__(self, on_refused: Callable[[str], None]) -> None:
        self.hosts: list[str] = []
        self.allowed: list[str] = service_hosts()
        self.target = httpx.URL("http://127.0.0.1")
        self._on_refused = on_refused
        self._refused: set[str] = set()

    def add(self, hosts: Iterable[str]) -> list[str]:
        added = [h for h in map(_host, hosts) if h not in self.hosts]
        self.hosts.extend(added)
        return added

    def allow(self, hosts: Iterable[str]) -> None:
        self.allowed.extend(h for h in map(_host, hosts) if h not in self.allowed)

    def routed(self, host: str) -> bool:
        return _matches(host.lower(), self.hosts)

    def permitted(self, host: str) -> bool:
        return is_loopback(host.lower()) or _matches(host.lower(), self.allowed)

    def refuse(self, host: str) -> str:
        """Record (once per host) and explain a refused host."""
        if host not in self._refused:
            self._refused.add(host)
            self._on_refused(host)
        return (
            f"isolated_http refused a connection to {host!r}: it is neither routed to the test server "
            f"(http.route({host!r})) nor allowed (isolated_http(allow_hosts=[{host!r}]))"
        )

    def rewrite(self, request: httpx.Request) -> httpx.Request:
        """``request`` pointed at the server if its host is routed; refused if it may not pass."""
        host = request.url.host
        if self.routed(host):
            request.url = request.url.copy_with(
                scheme=self.target.scheme, host=self.target.host, port=self.target.port
            )
            request.extensions = {**request.extensions, "sni_hostname": host}
        elif not self.permitted(host):
            raise httpx.ConnectError(self.refuse(host), request=request)
        return request


class AsyncRouter(httpx.AsyncBaseTransport):
    """An async transport applying :class:`Routes` (one or several, first routing wins) before ``inner``."""

    def __init__(self, routes: Callable[[], list[Routes]], inner: httpx.AsyncBaseTransport) -> None:
        self._routes = routes
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(_apply(self._routes(), request))

    async def aclose(self) -> None:
        await self.inner.aclose()


class Router(httpx.BaseTransport):
    """The sync twin of :class:`AsyncRouter`, for ``httpx.Client``."""

    def __init__(self, routes: Callable[[], list[Routes]], inner: httpx.BaseTransport) -> None:
        self._routes = routes
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(_apply(self._routes(), request))

    def close(self) -> None:
        self.inner.close()


def _apply(all_routes: list[Routes], request: httpx.Request) -> httpx.Request:
    host = request.url.host
    for routes in all_routes:
        if routes.routed(host):
            return routes.rewrite(request)
    if all_routes and not any(routes.permitted(host) for routes in all_routes):
        raise httpx.ConnectError(all_routes[0].refuse(host), request=request)
    return request


TRANSPORT_OPTIONS = ("verify", "cert", "trust_env", "http1", "http2", "limits")
"""The options of an httpx client that its default transport takes (kept when one is wrapped)."""


def transport_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in TRANSPORT_OPTIONS if k in kwargs}
