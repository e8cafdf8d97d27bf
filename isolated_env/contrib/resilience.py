"""Retries with backoff and a circuit breaker for application code, as an httpx transport.

    from isolated_env.contrib.resilience import CircuitBreaker, RetryPolicy, resilient_client

    async with resilient_client("https://api.example.com", retry=RetryPolicy(attempts=4)) as client:
        response = await client.get("/users/1")

:class:`ResilientTransport` wraps any ``httpx.AsyncBaseTransport`` (by default
``httpx.AsyncHTTPTransport()``), so it composes with everything httpx does above the transport
(auth, redirects, cookies, event hooks) and with any transport below it. Retries are tenacity's
(exponential backoff with jitter; ``Retry-After`` in seconds or as an HTTP date is honoured); the
circuit breaker (:class:`CircuitBreaker`) counts the failures of every request through the
transport. Time comes from a :class:`Clock`, so tests use a :class:`ManualClock` instead of waiting.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
from collections.abc import Collection
from datetime import UTC
from typing import Any

import httpx
import tenacity

from .._config import UNSET, _Unset
from .._errors import CircuitOpen, ConfigError
from ._circuit import CircuitBreaker, CircuitState, Clock, ManualClock, SystemClock

__all__ = [
    "IDEMPOTENT_METHODS",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "Clock",
    "ManualClock",
    "ResilientTransport",
    "RetryPolicy",
    "SystemClock",
    "resilient_client",
    "retry_after",
]

_log = logging.getLogger("isolated_env")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""The methods retried by default: repeating them does not change the outcome (RFC 9110 §9.2.2)."""

# A connection that could not be made (or had to wait for the pool) sent nothing: safe to retry for
# any method. The other errors broke an exchange that may have reached the server: retried only for
# the policy's methods. A pool timeout is our own congestion, so the breaker does not count it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_LOCAL = (httpx.PoolTimeout,)

# AsyncClient options that configure the transport it would build; with a transport of our own it
# ignores them, so resilient_client hands them to the inner transport instead.
_INNER_OPTIONS = ("verify", "cert", "http1", "http2", "limits", "proxy")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a :class:`ResilientTransport` retries.

    Up to ``attempts`` tries in all. Waits grow as ``backoff * multiplier**n`` (capped at
    ``max_backoff``) plus a random jitter of up to ``jitter`` seconds, unless the response says
    ``Retry-After``: then exactly that, or no retry if it exceeds ``max_retry_after``. Responses with
    a status in ``statuses`` and errors of the exchange (timeouts, dropped connections) are retried
    for ``methods``; a connection that could not be made is retried for any method. ``statuses`` and
    ``methods`` take any collection and are kept as frozensets (methods upper-cased).
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 10.0
    jitter: float = 0.1
    statuses: Collection[int] = frozenset({408, 429, 500, 502, 503, 504})
    methods: Collection[str] = IDEMPOTENT_METHODS
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"RetryPolicy(attempts={self.attempts!r}): give a whole number >= 1")
        for name in ("backoff", "max_backoff", "jitter", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"RetryPolicy({name}={value!r}): give a number of seconds >= 0")
        multiplier = self.multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier < 1:
            raise ConfigError(f"RetryPolicy(multiplier={self.multiplier!r}): give a number >= 1")
        # Frozen: normalise through object.__setattr__, so any collection of statuses/methods works.
        object.__setattr__(self, "statuses", frozenset(self.statuses))
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


_DEFAULT_RETRY = RetryPolicy()  # frozen: one shared default is safe


def retry_after(response: httpx.Response, *, now: float | None = None) -> float | None:
    """Seconds the ``Retry-After`` header asks to wait, or None when absent or unreadable.

    The header is delay-seconds (``120``; fractions accepted) or an HTTP date, read against ``now``
    (wall-clock seconds since the epoch; the system clock unless given). A date in the past means 0.
    """
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    reference = now if now is not None else SystemClock().time()
    if when.tzinfo is None:  # "-0000": an HTTP date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - reference)


def _where(request: httpx.Request) -> str:
    # Scheme, host, port and path only: userinfo and the query string may carry credentials.
    url = request.url
    return f"{request.method} {url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"


def _describe(request: httpx.Request, outcome: httpx.Response | BaseException) -> str:
    if isinstance(outcome, httpx.Response):
        what = f"{outcome.status_code} {outcome.reason_phrase}".rstrip()
    else:
        what = f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__
    return f"{what} from {_where(request)}"


def _last_outcome(state: tenacity.RetryCallState) -> Any:
    # Attempts ran out: hand back the last response (still open, for the caller to read), or raise
    # the last error itself rather than tenacity's RetryError.
    assert state.outcome is not None
    return state.outcome.result()


class ResilientTransport(httpx.AsyncBaseTransport):
    """An httpx transport that retries requests through ``inner`` by ``retry`` and guards them with
    ``breaker``.

    ``inner`` is any ``httpx.AsyncBaseTransport`` (``httpx.AsyncHTTPTransport()`` unless given); it
    is closed with this one. ``retry=None`` disables retries. ``breaker`` defaults to a
    ``CircuitBreaker(clock=clock)`` of this transport's own, counting every request through it;
    ``breaker=None`` disables it, and one breaker given to several transports is shared. ``clock``
    drives backoff sleeps (a :class:`ManualClock` in tests). ``retries`` counts the retries made.

    A response that is retried is closed before the wait; the one handed back is left open, so
    ``client.stream(...)`` still streams. A body given as bytes (``content=``, ``json=``,
    ``data=``) is replayed on each attempt; a streamed or multipart upload is sent once.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        *,
        retry: RetryPolicy | None = _DEFAULT_RETRY,
        breaker: CircuitBreaker | _Unset | None = UNSET,
        clock: Clock | None = None,
    ) -> None:
        if inner is not None and not isinstance(inner, httpx.AsyncBaseTransport):
            raise ConfigError(f"ResilientTransport(inner={inner!r}): give an httpx.AsyncBaseTransport")
        self.inner: httpx.AsyncBaseTransport = inner if inner is not None else httpx.AsyncHTTPTransport()
        self.retry = retry
        self.clock: Clock = clock or SystemClock()
        self.breaker = CircuitBreaker(clock=self.clock) if isinstance(breaker, _Unset) else breaker
        self.retries = 0

    def __repr__(self) -> str:
        return f"<ResilientTransport inner={self.inner!r} retry={self.retry!r} breaker={self.breaker!r}>"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.retry
        if policy is None or policy.attempts == 1 or not isinstance(request.stream, httpx.ByteStream):
            return await self._attempt(request)
        passed_over: list[httpx.Response] = []

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.retries += 1
            outcome = state.outcome
            assert outcome is not None
            last = outcome.exception() if outcome.failed else outcome.result()
            if isinstance(last, httpx.Response):
                passed_over.append(last)
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            _log.debug(
                "retrying %s in %.3g s (attempt %d of %d failed: %s)",
                _where(request),
                wait,
                state.attempt_number,
                policy.attempts,
                _describe(request, last) if last is not None else "?",
            )

        async def sleep(seconds: float) -> None:
            # Close what we retry past before waiting, so its connection is not held meanwhile.
            while passed_over:
                await passed_over.pop().aclose()
            await self.clock.sleep(seconds)

        backoff = tenacity.wait_exponential(
            multiplier=policy.backoff, exp_base=policy.multiplier, max=policy.max_backoff
        ) + tenacity.wait_random(0, policy.jitter)

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            if outcome is not None and not outcome.failed:
                asked = retry_after(outcome.result(), now=self.clock.time())
                if asked is not None:
                    return asked
            return backoff(state)

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(lambda exc: self._should_retry(policy, request, exc))
            | tenacity.retry_if_result(lambda response: self._should_retry(policy, request, response)),
            sleep=sleep,
            before_sleep=before_sleep,
            retry_error_callback=_last_outcome,
        )
        response: httpx.Response = await retrying(self._attempt, request)
        return response

    async def _attempt(self, request: httpx.Request) -> httpx.Response:
        breaker = self.breaker
        if breaker is None:
            return await self.inner.handle_async_request(request)
        probe = breaker.before_call()  # raises CircuitOpen while open: nothing is sent
        try:
            response = await self.inner.handle_async_request(request)
        except _LOCAL:
            breaker.record_abandoned(probe)
            raise
        except _TRANSIENT as exc:
            breaker.record_failure(probe, _describe(request, exc))
            raise
        except BaseException:
            breaker.record_abandoned(probe)
            raise
        if response.status_code in breaker.failure_statuses:
            breaker.record_failure(probe, _describe(request, response))
        else:
            breaker.record_success(probe)
        return response

    def _should_retry(
        self, policy: RetryPolicy, request: httpx.Request, outcome: httpx.Response | BaseException
    ) -> bool:
        if isinstance(outcome, CircuitOpen):
            return False
        if self.breaker is not None and self.breaker.state is CircuitState.OPEN:
            return False  # the next attempt would fail fast anyway; hand back what we have
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in policy.statuses or request.method not in policy.methods:
                return False
            wait = retry_after(outcome, now=self.clock.time())
            return wait is None or wait <= policy.max_retry_after
        if isinstance(outcome, _NOT_SENT):
            return True
        return isinstance(outcome, _TRANSIENT) and request.method in policy.methods

    async def aclose(self) -> None:
        await self.inner.aclose()


def resilient_client(
    base_url: str | httpx.URL = "",
    *,
    retry: RetryPolicy | None = _DEFAULT_RETRY,
    breaker: CircuitBreaker | _Unset | None = UNSET,
    clock: Clock | None = None,
    inner: httpx.AsyncBaseTransport | None = None,
    **client_options: Any,
) -> httpx.AsyncClient:
    """A plain ``httpx.AsyncClient`` (use it as ``async with``) whose transport is a
    :class:`ResilientTransport` with these ``retry``, ``breaker``, ``clock`` and ``inner``.

    Other options go to ``httpx.AsyncClient``. Those that configure the connection (``verify``,
    ``cert``, ``http1``, ``http2``, ``limits``, ``proxy``) go to the default inner
    ``httpx.AsyncHTTPTransport``, since a client with a transport of its own ignores them; with an
    ``inner`` of your own, configure it there. Transports in ``mounts=`` are used as given (wrap them
    in a ``ResilientTransport`` to make them resilient too).
    """
    if "transport" in client_options:
        raise ConfigError(
            "resilient_client(transport=...): give the transport to wrap as inner=...; "
            "the client's transport is the ResilientTransport"
        )
    connection = {name: client_options.pop(name) for name in _INNER_OPTIONS if name in client_options}
    if inner is None:
        if "trust_env" in client_options:
            connection["trust_env"] = client_options["trust_env"]
        inner = httpx.AsyncHTTPTransport(**connection)
    elif connection:
        raise ConfigError(
            f"resilient_client({', '.join(sorted(connection))}=...) with inner=...: httpx would ignore "
            "them; configure the inner transport instead"
        )
    transport = ResilientTransport(inner, retry=retry, breaker=breaker, clock=clock)
    return httpx.AsyncClient(base_url=base_url, transport=transport, **client_options)
