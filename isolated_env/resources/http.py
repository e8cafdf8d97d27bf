"""isolated_http(): a real HTTP/1.1 server on an ephemeral loopback port, answering by expectations.

``http.expect("GET", "/users/1").respond_json({...})`` declares a request and its answer; requests
that match nothing get a 500 and are recorded; ``check()`` (and the exit) raise every unmatched
request and unmet expectation with the reason. Any expectation can inject a fault instead: a delay,
a dropped connection, a 5xx, a 429 with Retry-After, a body trickled out slowly.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json as jsonlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self, TypeAlias

import anyio
import httpx

from .._errors import ConfigError, ResourceCheckFailed
from .._resource import resource
from ._checks import Problem, ProblemLog, require_asyncio
from ._h11server import H11Server, RecordedRequest, Reply
from ._http_matching import NOT_GIVEN, HeadersArg, QueryArg, RequestMatcher

__all__ = ["HttpExpectation", "HttpHandle", "RecordedRequest", "Responder", "isolated_http"]

Responder: TypeAlias = Callable[[RecordedRequest], httpx.Response | Awaitable[httpx.Response]]
"""Builds the answer to a request (sync or async), as an ``httpx.Response``."""

_TEXT = "text/plain; charset=utf-8"


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building one costs ~15 ms (it loads the CA bundle); every test client shares this one.
    return httpx.create_ssl_context()


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a number of seconds >= 0")
    return float(value)


class HttpExpectation:
    """One expected request and how to answer it; every builder method returns the expectation.

    By default it may be requested any number of times but at least once; ``times(n)`` makes it
    exactly ``n`` (after which the next matching expectation answers), ``optional()`` allows zero.
    """

    def __init__(self, handle: HttpHandle, matcher: RequestMatcher, *, ordered: bool, index: int) -> None:
        self.matcher = matcher
        self.ordered = ordered
        self.requests: list[RecordedRequest] = []
        """The requests this expectation answered, in order."""
        self._handle = handle
        self._index = index
        self._times: int | None = 1 if ordered else None
        self._optional = False
        self._reply = Reply()
        self._responder: Responder | None = None
        self._delay = 0.0
        self._chunks: tuple[int, float] | None = None

    def __repr__(self) -> str:
        return f"<HttpExpectation {self.describe()} used {len(self.requests)}/{self._times_text()}>"

    def describe(self) -> str:
        return self.matcher.describe()

    # -- how often -------------------------------------------------------------------------------

    def times(self, n: int) -> Self:
        """Exactly ``n`` requests (``0``: this request must never come)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"times({n!r}): give a whole number >= 0")
        self._times = n
        return self

    def optional(self) -> Self:
        """Do not fail ``check()`` if this expectation was never requested."""
        self._optional = True
        return self

    # -- what to answer --------------------------------------------------------------------------

    def respond(
        self,
        status: int = 200,
        body: bytes | str = b"",
        headers: HeadersArg = None,
        *,
        content_type: str | None = None,
    ) -> Self:
        """Answer with ``status``, ``body`` (``str`` is sent as UTF-8 text) and ``headers``."""
        pairs = list((headers or {}).items())
        if content_type is None and isinstance(body, str) and body:
            content_type = _TEXT
        if content_type is not None and not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("content-type", content_type))
        data = body.encode() if isinstance(body, str) else body
        self._set(Reply(status=_status(status), headers=tuple(pairs), body=data))
        return self

    def respond_json(self, data: Any, status: int = 200, headers: HeadersArg = None) -> Self:
        """Answer with ``data`` as JSON (``content-type: application/json``)."""
        return self.respond(status, jsonlib.dumps(data).encode(), headers, content_type="application/json")

    def respond_with(self, responder: Responder) -> Self:
        """Answer with ``responder(request)``, an ``httpx.Response`` (``httpx.Response(201, json=...)``);
        an exception in it is recorded and answered with a 500."""
        if not callable(responder):
            raise ConfigError(f"respond_with({responder!r}): give a function of the request")
        self._responder = responder
        return self

    # -- faults ----------------------------------------------------------------------------------

    def delay(self, seconds: float) -> Self:
        """Wait ``seconds`` before answering (other requests are served meanwhile)."""
        self._delay = _seconds("delay", seconds)
        return self

    def drop(self, *, reset: bool = False) -> Self:
        """Close the connection without answering (``reset=True``: abort it with a TCP RST)."""
        self._set(Reply(drop="reset" if reset else "close"))
        return self

    def fail(self, status: int = 500, body: str | None = None) -> Self:
        """Answer with a server error (any 5xx)."""
        if not 500 <= status <= 599:
            raise ConfigError(
                f"fail(status={status!r}): a server error is a 5xx status; use respond() otherwise"
            )
        return self.respond(status, body if body is not None else f"{status} (injected by isolated_http)")

    def rate_limit(self, retry_after: float = 1.0, *, status: int = 429) -> Self:
        """Answer ``429 Too Many Requests`` with ``Retry-After: <seconds>`` (fractions allowed)."""
        seconds = _seconds("retry_after", retry_after)
        value = str(int(seconds)) if seconds.is_integer() else repr(seconds)
        return self.respond(status, f"{status} (injected by isolated_http)", {"retry-after": value})

    def slow_body(self, *, chunk_size: int = 1, interval: float = 0.05) -> Self:
        """Send the body ``chunk_size`` bytes at a time, ``interval`` seconds apart."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"slow_body(chunk_size={chunk_size!r}): give a whole number of bytes >= 1")
        self._chunks = (chunk_size, _seconds("interval", interval))
        return self

    async def wait(self, timeout: float = 5.0) -> list[RecordedRequest]:  # noqa: ASYNC109 - like ws's
        """Wait until this expectation has been requested ``times(n)`` times (or once)."""
        want = self._times if self._times is not None else 1
        try:
            with anyio.fail_after(timeout):
                while len(self.requests) < want:
                    await self._handle._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"expected {self.describe()} {want} time(s) within {timeout:g} s, it was requested "
                f"{len(self.requests)} time(s); the server received {len(self._handle.requests)} request(s)"
            ) from None
        return list(self.requests)

    # -- book-keeping ----------------------------------------------------------------------------

    def _set(self, reply: Reply) -> None:
        self._reply = reply
        self._responder = None

    def _times_text(self) -> str:
        return "any" if self._times is None else str(self._times)

    @property
    def exhausted(self) -> bool:
        return self._times is not None and len(self.requests) >= self._times

    @property
    def satisfied(self) -> bool:
        used = len(self.requests)
        return self._optional or (used >= 1 if self._times is None else used >= self._times)

    def _unmet(self) -> Problem | None:
        if self.satisfied:
            return None
        used = len(self.requests)
        if self._times is None:
            return Problem(f"expected {self.describe()} at least once, it was never requested")
        return Problem(f"expected {self.describe()} {self._times} time(s), it was requested {used} time(s)")

    async def _answer(self, request: RecordedRequest) -> Reply:
        if self._delay:
            await anyio.sleep(self._delay)
        reply = self._reply
        if self._responder is not None:
            result = self._responder(request)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, httpx.Response):
                raise TypeError(f"respond_with must return an httpx.Response, got {result!r}")
            reply = _from_httpx(result)
        if self._chunks is not None:
            reply = dataclasses.replace(reply, chunk_size=self._chunks[0], chunk_interval=self._chunks[1])
        return reply


def _status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ConfigError(f"status={status!r}: give an HTTP status between 100 and 599")
    return status


def _from_httpx(response: httpx.Response) -> Reply:
    headers = tuple(response.headers.multi_items())
    try:
        return Reply(status=response.status_code, headers=headers, body=response.content)
    except httpx.ResponseNotRead:  # built with an async iterator: stream it
        return Reply(status=response.status_code, headers=headers, body=response.aiter_raw())


class HttpHandle:
    """A live HTTP server (``.url``), an ``httpx.AsyncClient`` pointed at it (``.client``), the
    expectations it answers by, and the log of ``requests`` it received."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[RecordedRequest] = []
        """Every request the server received, in arrival order (matched or not)."""
        self._client: httpx.AsyncClient | None = None
        self._expectations: list[HttpExpectation] = []
        self._problems = ProblemLog("isolated_http")
        self._changed = anyio.Event()
        self._server = H11Server(self._answer, self._problems.record)

    def __repr__(self) -> str:
        return f"<HttpHandle {self.url} requests={len(self.requests)} expectations={len(self._expectations)}>"

    @property
    def client(self) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` with ``base_url`` set to this server (closed on exit)."""
        if self._client is None:
            raise ConfigError("the HTTP client is only available inside `async with isolated_http()`")
        return self._client

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
        headers: HeadersArg = None,
        match: Callable[[RecordedRequest], bool] | None = None,
        ordered: bool = False,
    ) -> HttpExpectation:
        """Expect a request: ``method`` and ``path`` (a string, or a ``re.Pattern`` matched in full),
        and if given its exact ``query``, JSON body (``json=``), raw ``body``, these ``headers``
        (others may be present) and a ``match(request)`` predicate.

        A request is answered by the first expectation, in the order they were declared, that it
        matches and that has uses left. ``ordered=True`` expectations must also arrive in the order
        declared (each once unless ``times()`` says otherwise). Answers 200 with no body until told.
        """
        matcher = RequestMatcher.build(
            method, path, query=query, json=json, body=body, headers=headers, match=match
        )
        expectation = HttpExpectation(self, matcher, ordered=ordered, index=len(self._expectations))
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

    def check(self) -> None:
        """Raise ResourceCheckFailed listing every unmatched or out-of-order request, responder error
        and unmet expectation so far. What it raised once is not raised again on exit."""
        error = self._problems.report(self._unmet())
        if error is not None:
            raise error

    def _unmet(self) -> list[Problem]:
        return [p for p in (e._unmet() for e in self._expectations) if p is not None]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _answer(self, request: RecordedRequest) -> Reply:
        self.requests.append(request)
        try:
            expectation = self._match(request)
            if isinstance(expectation, str):
                self._problems.record(expectation)
                return _error_reply(expectation)
            expectation.requests.append(request)
        finally:
            self._notify()
        try:
            return await expectation._answer(request)
        except Exception as exc:
            message = (
                f"the responder of {expectation.describe()} raised {type(exc).__name__}: {exc} "
                f"(request: {request.method} {request.target}; answered 500)"
            )
            self._problems.record(message, exc)
            return _error_reply(message)

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

    async def _ie_reset(self) -> None:
        """Pristine for the next Hypothesis example: requests, expectations and client cookies
        cleared (problems are kept for the final exit)."""
        self._problems.reset(self._unmet())
        self.requests.clear()
        self._expectations.clear()
        if self._client is not None:
            self._client.cookies.clear()


def _unmatched(request: RecordedRequest, reasons: list[tuple[HttpExpectation, list[str]]]) -> str:
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


def _error_reply(message: str) -> Reply:
    return Reply(status=500, headers=(("content-type", _TEXT),), body=message.encode())


@resource("http")
async def isolated_http() -> AsyncIterator[HttpHandle]:
    """An HTTP/1.1 server on ``http://127.0.0.1:<free port>`` and an ``httpx.AsyncClient`` for it.

    Everything the server saw go wrong (unmatched requests, responder errors, unmet expectations) is
    raised on exit, or added as a note when the test already failed.
    """
    require_asyncio("isolated_http")
    handle = HttpHandle()
    port = await handle._server.start()
    handle.url = f"http://127.0.0.1:{port}"
    handle._problems.what = f"isolated_http at {handle.url}"
    body_error: BaseException | None = None
    try:
        # trust_env=False: a proxy from HTTP_PROXY must never sit between a test and its loopback server.
        handle._client = httpx.AsyncClient(base_url=handle.url, verify=_ssl_context(), trust_env=False)
        yield handle
    except BaseException as exc:
        body_error = exc
        raise
    finally:
        try:
            if handle._client is not None:
                await handle._client.aclose()
        finally:
            await handle._server.aclose()
        error = handle._problems.error([*handle._problems.current, *handle._unmet()], carried=True)
        if error is not None:
            if body_error is None:
                raise error
            body_error.add_note(str(error))
