"""Clocks and the circuit breaker behind :mod:`isolated_env.contrib.resilience` (no HTTP here).

A :class:`CircuitBreaker` is closed → open after ``failure_threshold`` consecutive failures →
half-open after ``cooldown`` seconds, when one probe decides between closed and open again. Time
comes from a :class:`Clock`, so a test drives cool-downs and backoff with a :class:`ManualClock`
instead of waiting.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Protocol

import anyio
import anyio.lowlevel

from .._errors import CircuitOpen, ConfigError

__all__ = ["CircuitBreaker", "CircuitState", "Clock", "ManualClock", "SystemClock"]

_Y2K = datetime(2000, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """Where retries and the breaker get the time from."""

    def now(self) -> float:
        """Monotonic seconds: cool-downs are measured on this."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch: a ``Retry-After`` HTTP date is read against this."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: ``advance(s)``, or ``sleep(s)``, which returns at once
    after moving the time and recording the delay in ``sleeps`` (so a test sees the backoff).

    ``now()`` starts at ``start``; ``time()`` (the wall clock) starts at ``wall``, 2000-01-01 UTC
    unless given, and moves with it.
    """

    def __init__(self, start: float = 0.0, *, wall: datetime | None = None) -> None:
        when = wall if wall is not None else _Y2K
        if when.tzinfo is None:
            raise ConfigError(f"ManualClock(wall={wall!r}): give an aware datetime (tzinfo=UTC)")
        self._start = float(start)
        self._now = self._start
        self._wall = when.timestamp()
        self.sleeps: list[float] = []
        """Every delay slept, in order."""

    def __repr__(self) -> str:
        return f"<ManualClock now={self._now:g} sleeps={len(self.sleeps)}>"

    def now(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall + (self._now - self._start)

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


def _whole(owner: str, label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}({label}={value!r}): give a whole number >= 1")


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
        _whole("CircuitBreaker", "failure_threshold", failure_threshold)
        _whole("CircuitBreaker", "half_open_max_calls", half_open_max_calls)
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

    def before_call(self) -> bool:
        """Admit a call or raise CircuitOpen; True when the call is a half-open probe.

        Every admitted call must end in exactly one of ``record_success``, ``record_failure`` or
        ``record_abandoned``, given what this returned.
        """
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
            else f"it opened after {self.failure_threshold} consecutive failure(s); a probe is allowed in {wait:.3g} s"
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

    def _move(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        if old is not new:
            self.transitions.append((old, new))
            if self.on_change is not None:
                self.on_change(old, new)
