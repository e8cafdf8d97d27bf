"""resilient_client(): an httpx.AsyncClient that retries transient failures behind a circuit breaker.

Retries are tenacity's (exponential backoff with jitter; a ``Retry-After`` header is honoured); the
circuit breaker is closed → open after ``failure_threshold`` consecutive failures → half-open after
``cooldown`` seconds, when one probe decides between closed and open again. Time comes from a
:class:`Clock`, so tests drive cool-downs and backoff with a :class:`ManualClock` instead of waiting.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import httpx
import tenacity

from ._config import UNSET, _Unset
from ._errors import CircuitOpen, ConfigError

__all__ = [
    "CircuitBreaker",
    "CircuitState",
    "Clock",
    "ManualClock",
    "ResilientClient",
    "RetryPolicy",
    "SystemClock",
    "resilient_client",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# Failures that say nothing was sent (safe to retry for any method) and failures of the exchange
# itself (safe to retry for idempotent methods); both count against the circuit breaker.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class Clock(Protocol):
    """Where the retry loop and the breaker get the time from."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: ``advance(s)``, or ``sleep(s)``, which returns at once
    after moving the time and recording the delay in ``sleeps`` (so a test sees the backoff)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ConfigError(f"advance({seconds!r}): time only moves forward")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class CircuitState(enum.Enum):
    """Where a :class:`CircuitBreaker` is: closed, open or half-open."""

    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls fail fast with CircuitOpen until the cool-down has passed."""
    HALF_OPEN = "half_open"
    """The cool-down has passed: the next call is a probe that closes or re-opens the circuit."""


class CircuitBreaker:
    """Stops calling a failing service for a while, then probes it.

    ``failure_threshold`` consecutive failures open the circuit; while open every call raises
    :class:`CircuitOpen` without reaching the server; after ``cooldown`` seconds it is half-open and
    up to ``half_open_max_calls`` probes go through: a success closes it, a failure re-opens it.
    A response counts as a failure when its status is in ``failure_statuses`` (5xx by default);
    connection errors and timeouts always do. ``state`` is observable at any time.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        half_open_max_calls: int = 1,
        failure_statuses: Collection[int] = range(500, 600),
        clock: Clock | None = None,
        name: str = "circuit",
        on_change: Callable[[CircuitState, CircuitState], None] | None = None,
    ) -> None:
        for label, value in (
            ("failure_threshold", failure_threshold),
            ("half_open_max_calls", half_open_max_calls),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CircuitBreaker({label}={value!r}): give a whole number >= 1")
        if isinstance(cooldown, bool) or not isinstance(cooldown, (int, float)) or cooldown < 0:
            raise ConfigError(f"CircuitBreaker(cooldown={cooldown!r}): give a number of seconds >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown = float(cooldown)
        self.half_open_max_calls = half_open_max_calls
        self.failure_statuses = frozenset(failure_statuses)
        self.clock: Clock = clock or SystemClock()
        self.name = name
        self.on_change = on_change
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.last_failure: str | None = None
        self.transitions: list[tuple[CircuitState, CircuitState]] = []
        """Every state change, in order (``(old, new)``)."""
        self._state = CircuitState.CLOSED
        self._probes = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value} failures={self.consecutive_failures}>"

    @property
    def state(self) -> CircuitState:
        if (
            self._state is CircuitState.OPEN
            and self.opened_at is not None
            and self.clock.now() - self.opened_at >= self.cooldown
        ):
            self._move(CircuitState.HALF_OPEN)
        return self._state

    def retry_in(self) -> float:
        """Seconds until a probe is allowed (0 unless open)."""
        if self.state is not CircuitState.OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self.clock.now())

    def reset(self) -> None:
        """Close the circuit and forget the failures (e.g. after fixing the service by hand)."""
        self.consecutive_failures = 0
        self.opened_at = None
        self._probes = 0
        self._move(CircuitState.CLOSED)

    def _move(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        if old is not new:
            self.transitions.append((old, new))
            if self.on_change is not None:
                self.on_change(old, new)

    def before_call(self) -> bool:
        """Admit a call or raise CircuitOpen; True when the call is a half-open probe."""
        state = self.state
        if state is CircuitState.CLOSED:
            return False
        if state is CircuitState.HALF_OPEN and self._probes < self.half_open_max_calls:
            self._probes += 1
            return True
        wait = self.retry_in()
        why = (
            "its half-open probe is still in flight"
            if state is CircuitState.HALF_OPEN
            else f"it opened after {self.failure_threshold} consecutive failure(s); "
            f"a probe is allowed in {wait:.3g} s"
        )
        raise CircuitOpen(
            f"circuit {self.name!r} is {state.value}: the call was not sent because {why} "
            f"(last failure: {self.last_failure})",
            name=self.name,
            retry_in=wait,
        )

    def record_success(self, probe: bool) -> None:
        if probe:
            self._probes = max(0, self._probes - 1)
            self.consecutive_failures = 0
            self.opened_at = None
            self._move(CircuitState.CLOSED)
        elif self._state is CircuitState.CLOSED:
            self.consecutive_failures = 0

    def record_failure(self, probe: bool, what: str) -> None:
        self.last_failure = what
        if probe:
            self._probes = max(0, self._probes - 1)
            self._open()
        elif self._state is CircuitState.CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failure_threshold:
                self._open()

    def record_abandoned(self, probe: bool) -> None:
        """The call ended without a verdict (cancelled, or an error that says nothing about the server)."""
        if probe:
            self._probes = max(0, self._probes - 1)

    def _open(self) -> None:
        self.opened_at = self.clock.now()
        self._move(CircuitState.OPEN)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a :class:`ResilientClient` retries.

    Up to ``attempts`` tries in all. Waits grow as ``backoff * multiplier**n`` (capped at
    ``max_backoff``) plus a random jitter of up to ``jitter`` seconds, unless the response says
    ``Retry-After``: then exactly that, or no retry if it exceeds ``max_retry_after``. Responses with
    a status in ``statuses`` and errors of the exchange (timeouts, dropped connections) are retried
    for ``methods``; a connection that could not be made is retried for any method.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 10.0
    jitter: float = 0.1
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    methods: frozenset[str] = IDEMPOTENT_METHODS
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"RetryPolicy(attempts={self.attempts!r}): give a whole number >= 1")
        for name in ("backoff", "max_backoff", "jitter", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"RetryPolicy({name}={value!r}): give a number of seconds >= 0")
        if self.multiplier < 1:
            raise ConfigError(f"RetryPolicy(multiplier={self.multiplier!r}): give a number >= 1")
        object.__setattr__(self, "statuses", frozenset(self.statuses))
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the ``Retry-After`` header asks to wait (delay-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(request: httpx.Request, outcome: httpx.Response | BaseException) -> str:
    what = (
        f"{outcome.status_code} {outcome.reason_phrase}"
        if isinstance(outcome, httpx.Response)
        else repr(outcome)
    )
    return f"{what} from {request.method} {request.url}"


class ResilientClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose every request is retried by ``retry_policy`` and guarded by
    ``breaker``; ``retries`` counts the retries made. Build it with :func:`resilient_client`."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = RetryPolicy(),  # frozen: one shared default is safe
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retry_policy = retry
        self.breaker = breaker
        self.clock: Clock = clock or SystemClock()
        self.retries = 0

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        stream = bool(kwargs.pop("stream", False))
        policy = self.retry_policy
        # A streamed upload cannot be sent twice; bytes (content=, json=, data=) can.
        replayable = isinstance(request.stream, httpx.ByteStream)
        attempts = policy.attempts if policy is not None and replayable else 1
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(lambda exc: self._should_retry(request, exc))
            | tenacity.retry_if_result(lambda response: self._should_retry(request, response)),
            sleep=self.clock.sleep,
            before_sleep=self._count_retry,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        response: httpx.Response = await retrying(self._attempt, request, kwargs)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def _attempt(self, request: httpx.Request, kwargs: dict[str, Any]) -> httpx.Response:
        breaker = self.breaker
        probe = breaker.before_call() if breaker is not None else False
        try:
            response = await super().send(request, stream=True, **kwargs)
            policy = self.retry_policy
            judged = breaker is not None and response.status_code in breaker.failure_statuses
            if judged or (policy is not None and response.status_code in policy.statuses):
                # An error body is small: read it now, so a response we retry past is already closed.
                try:
                    await response.aread()
                except BaseException:
                    await response.aclose()
                    raise
        except _TRANSIENT as exc:
            if breaker is not None:
                breaker.record_failure(probe, _describe(request, exc))
            raise
        except BaseException:
            if breaker is not None:
                breaker.record_abandoned(probe)
            raise
        if breaker is not None:
            if response.status_code in breaker.failure_statuses:
                breaker.record_failure(probe, _describe(request, response))
            else:
                breaker.record_success(probe)
        return response

    def _should_retry(self, request: httpx.Request, outcome: httpx.Response | BaseException) -> bool:
        policy = self.retry_policy
        if policy is None or isinstance(outcome, CircuitOpen):
            return False
        if self.breaker is not None and self.breaker.state is CircuitState.OPEN:
            return False  # the next attempt would fail fast anyway; hand back what we have
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in policy.statuses or request.method not in policy.methods:
                return False
            wait = retry_after(outcome)
            return wait is None or wait <= policy.max_retry_after
        if isinstance(outcome, _NOT_SENT):
            return True
        return isinstance(outcome, _TRANSIENT) and request.method in policy.methods

    def _wait(self, state: tenacity.RetryCallState) -> float:
        policy = self.retry_policy
        assert policy is not None
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            asked = retry_after(outcome.result())
            if asked is not None:
                return asked
        backoff = tenacity.wait_exponential(
            multiplier=policy.backoff, exp_base=policy.multiplier, max=policy.max_backoff
        ) + tenacity.wait_random(0, policy.jitter)
        return backoff(state)

    def _count_retry(self, state: tenacity.RetryCallState) -> None:
        self.retries += 1


def resilient_client(
    base_url: str | httpx.URL = "",
    *,
    retry: RetryPolicy | None = RetryPolicy(),  # frozen: one shared default is safe
    breaker: CircuitBreaker | _Unset | None = UNSET,
    clock: Clock | None = None,
    **client_options: Any,
) -> ResilientClient:
    """An ``httpx.AsyncClient`` (use it as ``async with``) with retries and a circuit breaker.

    ``retry=None`` disables retries, ``breaker=None`` the breaker; by default the client gets its own
    ``CircuitBreaker(clock=clock)``. Pass one breaker to several clients to share it. ``clock`` (a
    :class:`ManualClock` in tests) drives backoff sleeps and the default breaker's cool-down; other
    options go to ``httpx.AsyncClient``.
    """
    if isinstance(breaker, _Unset):
        breaker = CircuitBreaker(clock=clock)
    return ResilientClient(retry=retry, breaker=breaker, clock=clock, base_url=base_url, **client_options)
