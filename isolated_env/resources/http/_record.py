"""Record/replay for isolated_http: requests no expectation answers go to a cassette or upstream.

``replay`` answers from the cassette and has no HTTP client at all, so it cannot touch the network;
``record`` forwards each request to the real host and keeps what came back; ``record_missing``
replays what the cassette has and records the rest. The cassette is the LLM resource's format
(:mod:`isolated_env._recording`): secrets dropped as an interaction is added, the whole file scanned
for key shapes and for the credentials the forwarded requests carried before it is written, and each
response kept as the raw writes it arrived in, so a streamed body is replayed byte for byte.

Where a request is forwarded: a request for a routed host to ``upstream[host]`` (default
``https://<host>``), any other to ``upstream`` (the real service's base URL).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx

from ..._errors import ConfigError, SecretInCassette
from ..._recording import SECRET_HEADERS, Cassette, Interaction, canonical, key_of, make_interaction
from .._inprocess import Problem, ProblemLog
from ._intercept import active_routes, real_getaddrinfo
from ._routes import Routes
from ._server import RecordedRequest, Reply

__all__ = ["MODES", "Recorder", "open_recorder"]

MODES = ("live", "record", "replay", "record_missing")
_NOT_FORWARDED = frozenset({"host", "content-length", "connection", "accept-encoding", "transfer-encoding"})


def open_recorder(
    mode: str, cassette: Any, upstream: str | Mapping[str, str] | None, routes: Routes
) -> Recorder | None:
    if mode not in MODES:
        raise ConfigError(f"isolated_http(mode={mode!r}): give one of {', '.join(map(repr, MODES))}")
    if mode == "live":
        if cassette is not None or upstream is not None:
            raise ConfigError(
                "isolated_http(cassette=..., upstream=...) are for mode='record', 'replay' or 'record_missing'"
            )
        return None
    if cassette is None:
        raise ConfigError(f"isolated_http(mode={mode!r}) needs cassette=<path of the recording>")
    if isinstance(upstream, str):
        upstreams = {"": upstream.rstrip("/")}
    else:
        upstreams = {k.lower(): v.rstrip("/") for k, v in (upstream or {}).items()}
    for base in upstreams.values():
        if httpx.URL(base).scheme not in ("http", "https"):
            raise ConfigError(f"isolated_http(upstream={base!r}): give a base URL such as 'https://api.example.com'")
    loaded = Cassette.load(cassette, must_exist=mode == "replay") if mode != "record" else Cassette(Path(cassette), [])
    return Recorder(mode, loaded, upstreams, routes)


class Recorder:
    """Answers from a cassette and/or the upstream, as the mode says."""

    def __init__(self, mode: str, cassette: Cassette, upstream: dict[str, str], routes: Routes) -> None:
        self.mode = mode
        self.cassette = cassette
        self._upstream = upstream
        self._routes = routes
        self._keys: set[str] = set()
        self.client: httpx.AsyncClient | None = None
        """The forwarding client (none on replay), made before any patching of httpx."""

    def open_client(self, verify: Any) -> None:
        if self.mode != "replay":
            self.client = httpx.AsyncClient(verify=verify, trust_env=False, timeout=httpx.Timeout(60.0, connect=10.0))
            for base in self._upstream.values():
                self._routes.allow([httpx.URL(base).host])

    def _routed_host(self, request: RecordedRequest) -> str | None:
        host = (request.headers.get("host") or "").lower().rsplit(":", 1)[0]
        return host if host and self._routes.routed(host) else None

    async def answer(self, request: RecordedRequest, problems: ProblemLog) -> Reply:
        host = self._routed_host(request)
        path = f"//{host}{request.path}" if host else request.path
        query = request.target.partition("?")[2]
        text = canonical(request.method, path, query, request.body)
        if self.mode in ("replay", "record_missing"):
            found = self.cassette.take(key_of(text))
            if found is not None:
                return _reply(found)
            if self.mode == "replay":
                message = problems.unexpected(
                    f"request {request.method} {request.target}",
                    f"no recorded interaction matches it in {self.cassette.path} (answered 500); "
                    + self.cassette.nearest(text),
                )
                return Reply.text(500, message)
        return await self._forward(request, host, path, query, problems)

    async def _forward(
        self, request: RecordedRequest, host: str | None, path: str, query: str, problems: ProblemLog
    ) -> Reply:
        base = self._upstream.get(host, f"https://{host}") if host else self._upstream.get("")
        what = f"request {request.method} {request.target}"
        if base is None:
            return Reply.text(502, problems.unexpected(what, "there is no upstream to record it from: give "
                                                       "isolated_http(upstream='https://the.real.host')"))
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _NOT_FORWARDED]
        headers.append(("accept-encoding", "identity"))  # raw writes must be the body itself
        for name, value in headers:
            if name.lower() in SECRET_HEADERS:
                self._keys.update({value, value.partition(" ")[2]})
        assert self.client is not None
        started = time.perf_counter()
        writes: list[tuple[float, bytes]] = []
        try:
            url, extensions = await _past_routes(httpx.URL(base + request.target), headers, self._routes)
            async with self.client.stream(request.method, url, content=request.body, headers=headers,
                                          extensions=extensions) as response:
                async for piece in response.aiter_raw():
                    writes.append(((time.perf_counter() - started) * 1000, piece))
                status, received = response.status_code, response.headers.multi_items()
        except (httpx.HTTPError, OSError) as exc:
            return Reply.text(502, problems.unexpected(what, f"the upstream {base} could not be reached: {exc!r}"))
        item = make_interaction(
            request.method, path, query, request.headers.multi_items(), request.body, status, received, writes
        )
        item.used = True
        self.cassette.add(item)
        return _reply(item)

    def unmet(self) -> list[Problem]:
        if self.mode not in ("replay", "record_missing"):
            return []
        return [Problem(message) for message in self.cassette.unused_messages()]

    async def aclose(self, problems: ProblemLog) -> None:
        try:
            if self.cassette.added:
                try:
                    self.cassette.save(keep_existing=self.mode == "record_missing", known_secrets=self._keys)
                except SecretInCassette as exc:
                    problems.record(str(exc), exc)
        finally:
            if self.client is not None:
                await self.client.aclose()


async def _past_routes(
    url: httpx.URL, headers: list[tuple[str, str]], routes: Routes
) -> tuple[httpx.URL, dict[str, Any]]:
    """``url`` as the forwarder connects to it: a host that interception routes back to a test server
    is resolved by the system instead and reached by address, with its name kept for ``Host`` and TLS."""
    if not any(r.routed(url.host) for r in active_routes()):
        return url, {}
    port = url.port or (443 if url.scheme == "https" else 80)
    address = await anyio.to_thread.run_sync(real_getaddrinfo, url.host, port)
    routes.allow([address])
    headers.append(("host", url.netloc.decode("ascii")))
    return url.copy_with(host=address), {"sni_hostname": url.host}


def _reply(item: Interaction) -> Reply:
    if len(item.writes) <= 1:
        return Reply(status=item.status, headers=tuple(item.headers), body=item.body)
    return Reply(status=item.status, headers=tuple(item.headers), body=_writes(item))


async def _writes(item: Interaction) -> AsyncIterator[bytes]:
    for _, data in item.writes:
        yield data
