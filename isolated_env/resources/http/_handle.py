"""HttpHandle and isolated_http(): the server, its expectations, and the log of what it received.

A request is answered by the first expectation that matches it and has uses left; one that matches
nothing gets a 500 and is recorded, with the closest expectations and why each did not match.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import httpx

from ..._errors import ConfigError, ResourceCheckFailed
from ..._resource import resource
from .._inprocess import InProcessHandle, Problem, serving
from .._reports import where
from .._tls import RunCA, TlsMixin, existing_ca, run_ca
from ._expectation import HttpExpectation
from ._intercept import intercepting
from ._matching import NOT_GIVEN, FieldsArg, HeaderMatch, QueryArg, RequestMatcher
from ._record import Recorder, open_recorder
from ._routes import AsyncRouter, Router, Routes
from ._server import H11Server, RecordedRequest, Reply

__all__ = ["HttpHandle", "isolated_http"]


@functools.cache
def _build_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


async def _ssl_context() -> ssl.SSLContext:
    # Building one loads the CA bundle from disk (~15 ms): once per process, in a worker thread.
    if _build_ssl_context.cache_info().currsize:
        return _build_ssl_context()
    return await anyio.to_thread.run_sync(_build_ssl_context)


class HttpHandle(TlsMixin, InProcessHandle):
    """A live HTTP server (``.url``), an ``httpx.AsyncClient`` pointed at it (``.client``), the
    expectations it answers by, and the log of ``requests`` it received. With ``tls=True`` it
    serves ``https://`` and gives ``.ca_path``, ``.ssl_context`` and ``.env`` to trust it."""

    def __init__(self, ca: RunCA | None = None) -> None:
        super().__init__("isolated_http")
        self._ca = ca
        self._problems.chain = False  # a responder's error is told in one line: where it was raised
        self.url = ""
        self.requests: list[RecordedRequest] = []
        """Every request the server received, in arrival order (matched or not)."""
        self._client: httpx.AsyncClient | None = None
        self._sync_client: httpx.Client | None = None
        self._verify: ssl.SSLContext | None = None
        self._routes = Routes(self._refused)
        self._recorder: Recorder | None = None
        self._expectations: list[HttpExpectation] = []
        self._server = H11Server(self._answer, self._problems)

    def __repr__(self) -> str:
        return f"<HttpHandle {self.url} requests={len(self.requests)} expectations={len(self._expectations)}>"

    @property
    def client(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` with ``base_url`` set to this server (closed on exit)."""
        if self._client is None:
            raise ConfigError("the HTTP client is only available inside `async with isolated_http()`")
        return self._client

    @property
    def sync_client(self) -> httpx.Client:
        """An ``httpx.Client`` like ``.client``, for synchronous code (run it in a worker thread:
        the server answers from the event loop)."""
        if self._verify is None:
            raise ConfigError("the HTTP client is only available inside `async with isolated_http()`")
        if self._sync_client is None:
            self._sync_client = httpx.Client(base_url=self.url, transport=self.transport(sync=True), trust_env=False)
        return self._sync_client

    def transport(self, *, sync: bool = False) -> Any:
        """A new httpx transport that sends routed hosts to this server and refuses hosts neither
        routed, loopback nor allowed: ``httpx.AsyncClient(transport=http.transport())`` (or
        ``httpx.Client(transport=http.transport(sync=True))``) for a client of your own."""
        if self._verify is None:
            raise ConfigError("transport() is only available inside `async with isolated_http()`")
        if sync:
            return Router(lambda: [self._routes], httpx.HTTPTransport(verify=self._verify))
        return AsyncRouter(lambda: [self._routes], httpx.AsyncHTTPTransport(verify=self._verify))

    def route(self, *hosts: str) -> HttpHandle:
        """Send requests for ``hosts`` (``"api.stripe.com"``, ``"*.example.com"``) to this server,
        from ``.client``, ``.sync_client``, :meth:`transport`, and with ``intercept=True`` from any
        client in the process. With ``tls=True`` the certificate names them too."""
        if self._routes.add(hosts) and self._ca is not None:
            self._server.ssl_context = self._ca.server_context(self._routes.hosts)
        return self

    def allow(self, *hosts: str) -> HttpHandle:
        """Let requests for ``hosts`` through the network guard to the real host."""
        self._routes.allow(hosts)
        return self

    @property
    def hosts(self) -> list[str]:
        """The hosts routed to this server."""
        return list(self._routes.hosts)

    def _refused(self, host: str) -> None:
        self._problems.record(
            f"a connection to {host!r} was refused: neither routed to this server (http.route({host!r})) "
            f"nor allowed (http.allow({host!r}))"
        )

    def url_for(self, path: str) -> str:
        """The absolute URL of ``path`` on this server (for code that wants a full URL)."""
        return self.url + "/" + path.lstrip("/")

    def expect(
        self,
        method: str,
        path: str | re.Pattern[str],
        *,
        query: QueryArg = None,
        json: Any = NOT_GIVEN,
        body: bytes | str | None = None,
        headers: HeaderMatch = None,
        match: Callable[[RecordedRequest], bool] | None = None,
        ordered: bool = False,
        json_contains: Any = NOT_GIVEN,
        query_contains: FieldsArg = None,
        form: FieldsArg = None,
        host: str | None = None,
    ) -> HttpExpectation:
        """Expect a request: ``method`` and ``path`` (a string, or a ``re.Pattern`` matched in full),
        and if given its exact ``query`` or the fields ``query_contains`` (others may be present), its
        JSON body (``json=``) or a subset of it (``json_contains=``: objects may have more keys), its
        ``form`` fields (others may be present), raw ``body``, these ``headers`` (a value, a
        ``re.Pattern``, ``True`` for present, ``False`` for absent; others may be present), its
        ``host`` (a routed host, see :meth:`route`) and a ``match(request)`` predicate.

        A request is answered by the first expectation, in the order they were declared, that it
        matches and that has uses left. ``ordered=True`` expectations must also arrive in the order
        declared (each once unless ``times()`` says otherwise). Answers 200 with no body until told.
        """
        matcher = RequestMatcher.build(
            method, path, query=query, json=json, body=body, headers=headers, match=match,
            json_contains=json_contains, query_contains=query_contains, form=form, host=host,
        )
        expectation = HttpExpectation(
            matcher, ordered=ordered, index=len(self._expectations), pulse=self._pulse, received=self.requests
        )
        self._expectations.append(expectation)
        return expectation

    @property
    def expectations(self) -> list[HttpExpectation]:
        return list(self._expectations)

    def assert_no_requests(self) -> None:
        """Raise ResourceCheckFailed if the server received any request."""
        if self.requests:
            listed = "\n".join(f"  - {r.method} {r.target}" for r in self.requests[:20])
            raise ResourceCheckFailed(
                f"isolated_http at {self.url} expected no requests, "
                f"it received {len(self.requests)}:\n{listed}"
            )

    def _unmet(self) -> list[Problem]:
        unmet = [p for p in (e._unmet() for e in self._expectations) if p is not None]
        return unmet + (self._recorder.unmet() if self._recorder is not None else [])

    async def _answer(self, request: RecordedRequest) -> Reply:
        self.requests.append(request)
        try:
            expectation = self._match(request)
            if isinstance(expectation, str):
                if self._recorder is not None and isinstance(expectation, _Unmatched):
                    return await self._recorder.answer(request, self._problems)
                self._problems.record(expectation)
                return Reply.text(500, expectation)
            expectation.requests.append(request)
        finally:
            self._pulse.notify()
        try:
            return await expectation._answer(request)
        except Exception as exc:  # the test's responder: recorded, answered 500, raised in the test
            message = (
                f"the responder of {expectation.describe()} raised {type(exc).__name__}: {exc} "
                f"(request: {request.method} {request.target}; answered 500)\nat {where(exc)}"
            )
            self._problems.record(message, exc)
            return Reply.text(500, message)

    def _match(self, request: RecordedRequest) -> HttpExpectation | str:
        """The expectation that answers ``request``, or why there is none."""
        reasons: list[tuple[HttpExpectation, list[str]]] = []
        for expectation in self._expectations:
            mismatches = expectation.matcher.mismatches(request)
            if not mismatches and not expectation.exhausted:
                break
            reasons.append((expectation, mismatches))
        else:
            return _unmatched(request, reasons)
        if expectation.ordered:
            for earlier in self._expectations[: expectation._index]:
                if earlier.ordered and not earlier.satisfied:
                    return (
                        f"{request.method} {request.target} arrived out of order: it matches the ordered "
                        f"expectation {expectation.describe()}, but the earlier ordered expectation "
                        f"{earlier.describe()} has had {len(earlier.requests)} of {earlier._times_text()} "
                        "request(s) (answered 500)"
                    )
        return expectation

    async def _start(self) -> None:
        if self._ca is not None:
            self._server.ssl_context = self._ca.server_context(self._routes.hosts)
        port = await self._server.start()
        self.url = f"{'https' if self._ca is not None else 'http'}://127.0.0.1:{port}"
        self._routes.target = httpx.URL(self.url)
        self._problems.what = f"isolated_http at {self.url}"

    async def _aclose(self) -> None:
        try:
            if self._client is not None:
                await self._client.aclose()
            if self._sync_client is not None:
                self._sync_client.close()
            if self._recorder is not None:
                await self._recorder.aclose(self._problems)
        finally:
            await self._server.aclose()

    async def _reset(self) -> None:
        """Pristine for the next Hypothesis example: requests, expectations and client cookies
        cleared (problems are kept for the final exit)."""
        self._problems.reset()
        self.requests.clear()
        self._expectations.clear()
        for client in (self._client, self._sync_client):
            if client is not None:
                client.cookies.clear()


class _Unmatched(str):
    """The account of a request no expectation matched (a cassette may still answer it)."""


def _unmatched(request: RecordedRequest, reasons: list[tuple[HttpExpectation, list[str]]]) -> str:
    return _Unmatched(_account(request, reasons))


def _account(request: RecordedRequest, reasons: list[tuple[HttpExpectation, list[str]]]) -> str:
    head = f"{request.method} {request.target} matched no expectation (answered 500)"
    if request.body:
        head += f"; body: {request.body[:200]!r}"
    if not reasons:
        return head + "; no expectations were declared"
    lines = [head + "; closest expectations:"]
    for expectation, mismatches in sorted(reasons, key=lambda item: len(item[1]))[:3]:
        if not mismatches:
            lines.append(
                f"  - {expectation.describe()}: matches, but it allows {expectation._times_text()} "
                f"request(s) and has had them all"
            )
        else:
            why = "; ".join(mismatches).replace("\n", "\n      ")
            lines.append(f"  - {expectation.describe()}: {why}")
    return "\n".join(lines)


@resource("http", reset=lambda handle: handle._reset())
async def isolated_http(
    *,
    tls: bool = False,
    hosts: Sequence[str] = (),
    allow_hosts: Sequence[str] = (),
    intercept: bool = False,
    mode: str = "live",
    cassette: str | os.PathLike[str] | None = None,
    upstream: str | Mapping[str, str] | None = None,
) -> AsyncIterator[HttpHandle]:
    """An HTTP/1.1 server on ``http://127.0.0.1:<free port>`` and an ``httpx.AsyncClient`` for it.

    ``tls=True`` serves ``https://`` with a certificate of the run's test CA (for ``localhost``,
    ``127.0.0.1`` and routed hosts), which ``.client`` trusts. ``hosts`` are routed to the server
    (see :meth:`HttpHandle.route`), ``allow_hosts`` let through to the real host; other hosts are
    refused. ``intercept=True`` applies that to every client of the process (httpx, aiohttp,
    requests) until the exit.

    ``mode="record"`` forwards what no expectation answers to ``upstream`` (the real service's base
    URL; a routed host's own by default) and writes it to ``cassette``; ``"replay"`` answers it from
    the cassette without touching the network; ``"record_missing"`` replays what is there and records
    the rest. Secrets never reach the file. Everything the server saw go wrong
    (unmatched requests, responder errors, unmet expectations) is raised on exit, or added as a note
    when the test already failed.
    """
    if isinstance(hosts, str) or isinstance(allow_hosts, str):
        raise ConfigError("isolated_http(hosts=..., allow_hosts=...): give a list of host names, not one string")
    handle = HttpHandle(await run_ca() if tls else None)
    handle.route(*hosts).allow(*allow_hosts)
    handle._recorder = open_recorder(mode, cassette, upstream, handle._routes)
    await handle._start()
    async with serving(handle._problems, handle._aclose):
        # The test CA for the server and routed hosts, the system's for allowed ones.
        handle._verify = handle._ca.bundle_context if handle._ca is not None else await _ssl_context()
        # trust_env=False: a proxy from HTTP_PROXY must never sit between a test and its loopback server.
        handle._client = httpx.AsyncClient(base_url=handle.url, transport=handle.transport(), trust_env=False)
        if handle._recorder is not None:
            signer = existing_ca()  # an upstream may be another isolated server, signed by the test CA
            handle._recorder.open_client(signer.bundle_context if signer is not None else handle._verify)
        if not intercept:
            yield handle
            return
        ca = handle._ca
        bundle = (ca.bundle_context, str(ca.bundle_path)) if ca is not None else (None, None)
        with intercepting(handle._routes, *bundle):
            yield handle
