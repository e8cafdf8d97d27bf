"""HttpExpectation: one expected request, how often it may come, and how to answer it."""

from __future__ import annotations

import inspect
import json as jsonlib
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeAlias

import httpx

from ..._errors import ConfigError
from .._inprocess import Problem, Pulse
from ._faults import FaultMethods, Faults
from ._matching import HeadersArg, RequestMatcher
from ._server import TEXT, RecordedRequest, Reply

__all__ = ["HttpExpectation", "Responder"]

Responder: TypeAlias = Callable[[RecordedRequest], httpx.Response | Awaitable[httpx.Response]]
"""Builds the answer to a request (sync or async), as an ``httpx.Response``."""


class HttpExpectation(FaultMethods):
    """One expected request and how to answer it; every builder method returns the expectation.

    By default it may be requested any number of times but at least once; ``times(n)`` makes it
    exactly ``n`` (after which the next matching expectation answers), ``optional()`` allows zero.
    """

    def __init__(
        self,
        matcher: RequestMatcher,
        *,
        ordered: bool,
        index: int,
        pulse: Pulse,
        received: list[RecordedRequest],
    ) -> None:
        self.matcher = matcher
        self.ordered = ordered
        self.requests: list[RecordedRequest] = []
        """The requests this expectation answered, in order."""
        self._index = index
        self._pulse = pulse
        self._received = received  # every request the server got, for the timeout message
        self._times: int | None = 1 if ordered else None
        self._optional = False
        self._reply = Reply()
        self._responder: Responder | None = None
        self._faults = Faults()

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

    # -- what to answer (faults: see FaultMethods) ------------------------------------------------

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
            content_type = TEXT
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

    async def wait(self, timeout: float = 5.0) -> list[RecordedRequest]:  # noqa: ASYNC109 - like ws's
        """Wait until this expectation has been requested ``times(n)`` times (or once)."""
        want = self._times if self._times is not None else 1
        if not await self._pulse.wait_until(lambda: len(self.requests) >= want, timeout):
            raise TimeoutError(
                f"expected {self.describe()} {want} time(s) within {timeout:g} s, it was requested "
                f"{len(self.requests)} time(s); the server received {len(self._received)} request(s)"
            )
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
        await self._faults.wait()
        reply = self._reply
        if self._responder is not None:
            result = self._responder(request)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, httpx.Response):
                raise TypeError(f"respond_with must return an httpx.Response, got {result!r}")
            reply = _from_httpx(result)
        return self._faults.shape(reply)


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
