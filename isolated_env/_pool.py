"""Pool: a capacity limiter plus an idle list, one per resource key and event loop.

lease → reuse an idle instance or create one → yield → reset under a shield → back to idle.
A failed reset destroys the instance: a dirty instance is never handed out again.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import anyio

from . import _metrics
from ._errors import LeaseTimeout, PoolClosed
from ._metrics import percentile

__all__ = ["Lease", "Pool", "PoolStatistics", "TryLater"]

_log = logging.getLogger("isolated_env")

T = TypeVar("T")

_SAMPLES = 10_000


class TryLater(Exception):
    """Raised by ``create`` when the backing store is momentarily full (another process holds every
    slot): the pool waits, looks at its idle list again, and retries until the lease timeout."""


@dataclasses.dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of one pool's counters; wait times are in milliseconds."""

    name: str
    capacity: int
    created: int
    reused: int
    destroyed: int
    reset_failures: int
    leased: int
    idle: int
    max_concurrent: int
    waits: int
    wait_p50_ms: float
    wait_p95_ms: float

    @property
    def leases(self) -> int:
        return self.created + self.reused

    @property
    def hit_ratio(self) -> float:
        """Share of leases served by an idle instance rather than a new one."""
        return self.reused / self.leases if self.leases else 0.0


class Lease(Generic[T]):
    """One instance on loan from a pool; ``discard()`` makes the pool destroy it on return."""

    __slots__ = ("discarded", "fresh", "token", "value")

    def __init__(self, value: T, fresh: bool) -> None:
        self.value = value
        self.fresh = fresh
        self.discarded = False
        self.token: object | None = None

    def discard(self) -> None:
        self.discarded = True


class Pool(Generic[T]):
    """Capacity-limited pool of expensive instances (connections, slots, databases).

    ``create`` makes an instance, ``reset`` returns a used one to pristine state (raise to have it
    destroyed), ``destroy`` frees it for good, ``validate`` is a cheap check of an idle instance.
    """

    def __init__(
        self,
        name: str,
        *,
        create: Callable[[], Awaitable[T]],
        destroy: Callable[[T], Awaitable[None]],
        reset: Callable[[T], Awaitable[None]] | None = None,
        validate: Callable[[T], bool] | None = None,
        capacity: int,
        lease_timeout: float,
        reset_timeout: float = 30.0,
        reuse_oldest: bool = False,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.lease_timeout = lease_timeout
        self._create = create
        self._destroy = destroy
        self._reset = reset
        self._validate = validate
        self._reset_timeout = reset_timeout
        # The idle instance handed out next: the one released last (warm caches), or with
        # ``reuse_oldest`` the one released first (a resource whose background work on a released
        # instance must have had time to finish: ClickHouse slots and their spare databases).
        self._reuse_oldest = reuse_oldest
        self._limiter = anyio.CapacityLimiter(capacity)
        self._idle: list[T] = []
        self._closed = False
        self._created = self._reused = self._destroyed = self._reset_failures = 0
        self._leased = self._max_concurrent = self._waits = self._detached = 0
        self._wait_ms: collections.deque[float] = collections.deque(maxlen=_SAMPLES)
        # The same samples kept sorted as they come: statistics() (every Environment's exit reads
        # it) then costs no sort of up to _SAMPLES figures.
        self._wait_sorted: list[float] = []
        self.errors: list[BaseException] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease[T]]:
        """Borrow an instance; waits for capacity, raises LeaseTimeout past ``lease_timeout``."""
        lease = await self.acquire()
        try:
            yield lease
        finally:
            await self.release(lease)

    async def acquire(self) -> Lease[T]:
        """Borrow an instance until :meth:`release` (or :meth:`detach`) gives it back."""
        if self._closed:
            raise PoolClosed(f"pool {self.name!r} is closed; create a new Environment in a running event loop")
        token = object()
        started = time.perf_counter()
        try:
            if self._limiter.available_tokens >= 1:
                # Free capacity (the usual case): no timeout scope to set up around a wait that
                # cannot happen.
                self._limiter.acquire_on_behalf_of_nowait(token)
            else:
                self._waits += 1
                with anyio.fail_after(self.lease_timeout):
                    await self._limiter.acquire_on_behalf_of(token)
                _metrics.record_phase(_metrics.CAPACITY_WAITS, (time.perf_counter() - started) * 1000)
        except TimeoutError:
            raise LeaseTimeout(
                f"no {self.name} became free within {self.lease_timeout:g} s: all {self.capacity} are leased. "
                f"Raise the capacity (ISOLATED_ENV_CAPACITY or a larger ISOLATED_ENV_PROFILE), or "
                f"ISOLATED_ENV_LEASE_TIMEOUT, or look for tests that hold resources without releasing them"
            ) from None
        waited = time.perf_counter() - started
        if waited > 1.0:
            _log.info(
                "isolated_env: waited %.1f s for a lease of %s (capacity %d, all leased); raise "
                "ISOLATED_ENV_CAPACITY or pick a larger profile if this is common", waited, self.name, self.capacity,
            )
        try:
            self._sample_wait(waited * 1000)
            lease = await self._checkout()
        except BaseException:
            self._limiter.release_on_behalf_of(token)
            raise
        lease.token = token
        self._leased += 1
        self._max_concurrent = max(self._max_concurrent, self._leased)
        return lease

    async def release(self, lease: Lease[T]) -> Exception | None:
        """Give a leased instance back: reset and pooled, or destroyed when discarded or dirty.
        Returns why the reset failed (the instance was destroyed), None when it did not."""
        if lease.token is None:
            return None  # already given back
        token, lease.token = lease.token, None
        self._leased -= 1
        failure: Exception | None = None
        try:
            # A cancelled test must still hand its instance back clean (or destroy it).
            with anyio.CancelScope(shield=True):
                failure = await self._checkin(lease)
        finally:
            self._limiter.release_on_behalf_of(token)
        return failure

    async def detach(self, lease: Lease[T]) -> None:
        """Take a leased instance out of the pool for good (kept for a failed test): its capacity
        is freed, the instance is neither reset nor destroyed."""
        if lease.token is None:
            return
        token, lease.token = lease.token, None
        self._leased -= 1
        self._detached += 1
        self._limiter.release_on_behalf_of(token)

    async def _checkout(self) -> Lease[T]:
        deadline = anyio.current_time() + self.lease_timeout
        delay = 0.002
        while True:
            while self._idle:
                item = self._idle.pop(0 if self._reuse_oldest else -1)
                if self._validate is None or self._validate(item):
                    self._reused += 1
                    _metrics.record_lease(self.name, reused=True)
                    return Lease(item, fresh=False)
                with anyio.CancelScope(shield=True):
                    await self._destroy_quietly(item)
            try:
                # Shielded so a cancel cannot leave a half-made instance (a slot leased on a
                # server, a connection opened) that nobody owns; bounded by the lease timeout.
                with anyio.CancelScope(shield=True), _metrics.phase(_metrics.CONNECTION_OPENS):
                    with anyio.move_on_after(max(0.001, deadline - anyio.current_time())) as bound:
                        item = await self._create()
                if bound.cancelled_caught:
                    raise self._create_timed_out()
            except TryLater as exc:
                if anyio.current_time() + delay > deadline:
                    raise LeaseTimeout(f"no {self.name} became free within {self.lease_timeout:g} s: {exc}") from None
                # Our own instances may come back meanwhile (they are preferred to new ones).
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            self._created += 1
            _metrics.record_lease(self.name, reused=False)
            return Lease(item, fresh=True)

    def _create_timed_out(self) -> LeaseTimeout:
        # A TimeoutError of create's own (a driver's connect timeout) is not this: it propagates.
        return LeaseTimeout(
            f"making a new {self.name} took longer than the lease timeout ({self.lease_timeout:g} s) and was "
            f"abandoned ({self._leased} leased, capacity {self.capacity}); the server may be stopped, overloaded "
            f"or slow to make one (a large template, a busy machine). Raise ISOLATED_ENV_LEASE_TIMEOUT (or "
            f"lease_timeout= of Environment), or lower the load on the server: fewer parallel workers, or a smaller "
            f"ISOLATED_ENV_CAPACITY / ISOLATED_ENV_PROFILE so fewer instances are made at once"
        )

    async def _checkin(self, lease: Lease[T]) -> Exception | None:
        item = lease.value
        if lease.discarded or self._closed:
            await self._destroy_quietly(item)
            return None
        if self._reset is not None:
            try:
                with anyio.fail_after(self._reset_timeout):
                    await self._reset(item)
            except Exception as exc:
                self._reset_failures += 1
                self.errors.append(exc)
                await self._destroy_quietly(item)
                return exc
        self._idle.append(item)
        return None

    async def _destroy_quietly(self, item: T) -> None:
        self._destroyed += 1
        try:
            with anyio.fail_after(self._reset_timeout):
                await self._destroy(item)
        except Exception as exc:
            self.errors.append(exc)

    async def aclose(self, *, deadline: float = math.inf) -> None:
        """Destroy idle instances; leased ones are destroyed when they come back. Past
        ``deadline`` (anyio's clock) the rest are let go undestroyed: a server that stopped
        answering must not hold a closing event loop for a reset timeout per instance. What they
        held ends with the process (connections) or with its lease's TTL (a leased slot)."""
        self._closed = True
        idle, self._idle = self._idle, []
        left = len(idle)
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            for item in idle:
                await self._destroy_quietly(item)
                left -= 1
        if scope.cancelled_caught:
            _log.warning("isolated_env: closing the %s pool took too long; %d idle instance(s) let go undestroyed",
                         self.name, left)

    def _sample_wait(self, ms: float) -> None:
        if len(self._wait_ms) == self._wait_ms.maxlen:
            oldest = self._wait_ms.popleft()
            del self._wait_sorted[bisect.bisect_left(self._wait_sorted, oldest)]
        self._wait_ms.append(ms)
        bisect.insort(self._wait_sorted, ms)

    def statistics(self) -> PoolStatistics:
        waits = self._wait_sorted
        return PoolStatistics(
            name=self.name,
            capacity=self.capacity,
            created=self._created,
            reused=self._reused,
            destroyed=self._destroyed,
            reset_failures=self._reset_failures,
            leased=self._leased,
            idle=len(self._idle),
            max_concurrent=self._max_concurrent,
            waits=self._waits,
            wait_p50_ms=percentile(waits, 0.5),
            wait_p95_ms=percentile(waits, 0.95),
        )
