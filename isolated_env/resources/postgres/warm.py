"""The warm pool: clones of one template made ahead of demand by background tasks, each with a
session already started and parked (:mod:`~isolated_env._drivers.asyncpg_sessions`), so a lease
is a pop from a list and the test's loop takes the session over without starting a backend;
released clones are dropped in the background, never handed out again.

The pools live in the process's background loop (:mod:`~isolated_env._background`), not in a
test's: a database belongs to no loop, and with a loop per test (pytest-asyncio) the refills
would otherwise start again, and run while the test does, in every test's loop. The names of
clones made but never leased when the pool closes are reused by the next pool of the process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ..._demand import Demand, warm_bounds
from ..._drivers import asyncpg as driver
from ..._errors import PoolClosed
from ..._metrics import percentile
from ..._runtime import Runtime
from ..._servers.postgres import PostgresServer
from .handle import Clone
from .labels import create_database, disown, drop_database, no_createdb, server_key
from .roles import lease_server, lease_sql
from .spares import WarmPoolStatistics, new_name, put_spares, take_spare
from .templates import PostgresTemplate, forget_template, template_database

__all__ = ["WarmPool", "WarmPoolStatistics", "warm_pool", "warm_pools"]

log = logging.getLogger("isolated_env")

_MAX_WORKERS = 4  # concurrent clones per pool: FILE_COPY checkpoints coalesce, 2-4 in flight is fastest

class WarmPool:
    """Ready clones of one template for one event loop, refilled by worker tasks, drained by a dropper."""

    def __init__(
        self, server: PostgresServer, template: PostgresTemplate, template_name: str, target: int,
        tests: PostgresServer | None = None, grant: str | None = None,
    ) -> None:
        self.server = server  # creates and drops the clones
        self.tests = tests or server  # whom the clones' connections log in as
        self.grant = grant  # the role given CREATE on each clone
        self.template = template
        self.template_name = template_name
        self.capacity = target
        self.demand = Demand(*warm_bounds(target))
        self._peak = 0
        self.ready: collections.deque[Clone] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[Clone]] = collections.deque()
        self.creating: set[str] = set()
        self.drops: collections.deque[str] = collections.deque()
        self.dropping: set[str] = set()
        self.closed = False
        self._wake = asyncio.Event()
        self._wake_dropper = asyncio.Event()
        self._dropped = asyncio.Event()
        self._scopes: list[anyio.CancelScope] = []
        self._running = 0
        self._stopped = anyio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the background loop, once started
        self._taken: collections.deque[None] = collections.deque()  # ready clones taken from other threads
        self._clone_ms: collections.deque[float] = collections.deque(maxlen=10_000)
        self._clones = self._spares = self._drops_done = self._starved = self._errors = 0
        self.last_error: BaseException | None = None

    def login(self, name: str) -> PostgresServer:
        """Whom tests log in to clone ``name`` as: its own role (:func:`.roles.lease_server`)."""
        return lease_server(self.tests, name) or self.tests

    def closing_sql(self, name: str) -> str:
        """With guard rails on, what closes clone ``name`` to every role but its own."""
        return lease_sql(name, lease_server(self.tests, name)) if self.grant else ""

    @property
    def spare_key(self) -> tuple[int, str, str]:  # a forked child never takes its parent's
        return (os.getpid(), server_key(self.tests), self.template_name)

    async def start(self, runtime: Runtime) -> None:
        """Refill workers and the dropper run in the runtime's task group (never as stray tasks)."""
        self._loop = asyncio.get_running_loop()
        for n in range(max(1, min(_MAX_WORKERS, self.demand.hi))):
            await runtime.spawn(self._guarded, self._worker, name=f"isolated_env refill {self.template_name} #{n}",
                                daemon=True)
        await runtime.spawn(self._guarded, self._dropper, name=f"isolated_env drop {self.template_name}", daemon=True)

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run one background loop of this pool until the pool closes (its own cancel scope, so that
        closing this pool stops its loops and no other work of the runtime)."""
        self._running += 1
        try:
            with anyio.CancelScope() as scope:
                self._scopes.append(scope)
                if self.closed:
                    scope.cancel()
                await work()
        finally:
            self._running -= 1
            if self._running == 0:
                self._stopped.set()

    # -- leasing --------------------------------------------------------------------------

    def take_ready(self) -> Clone | None:
        """A ready clone, popped from any thread without a hop to this pool's busy loop (None: none
        ready, or closed); the caller wakes the refill (:meth:`refill`) once it took the session over."""
        if self.closed or self._loop is None:
            return None
        try:
            clone = self.ready.popleft()  # atomic: _deliver appends and aclose drains in the pool's loop
        except IndexError:
            return None
        self._taken.append(None)  # a lease for the demand, counted in the pool's loop (Demand is not thread-safe)
        return clone

    def _tally(self) -> None:
        while self._taken:  # only this loop takes from it
            self._taken.popleft()
            self.demand.lease()

    def _refilled(self) -> None:
        self._tally()
        self._wake.set()

    def refill(self) -> None:
        """Wake the refill from any thread, without waiting (:meth:`release` wakes it too)."""
        if self._loop is not None and not self.closed:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to refill
                self._loop.call_soon_threadsafe(self._refilled)

    async def take(self) -> Clone:
        """A ready clone at once, or the next one made; never waits for refill when one is ready."""
        if self.closed:
            raise PoolClosed(f"the warm pool of {self.template_name} is closed (its event loop ended)")
        self._wake.set()
        clone = self.take_ready()  # a clone holds no connection while ready: its session is parked
        if clone is not None:
            self._tally()
            return clone
        self._starved += 1
        self.demand.lease(starved=True, waiting=len(self.waiters) + 1)
        waiter: asyncio.Future[Clone] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._deliver(waiter.result())  # got one just as we gave up: pass it on
            with contextlib.suppress(ValueError):  # already popped by _deliver or _fail_waiters
                self.waiters.remove(waiter)
            raise

    def release(self, clone: Clone) -> None:
        """Close the clone's connection and have it dropped in the background (kept ones stay)."""
        if clone.conn is not None:
            clone.conn.terminate()
        self._wake.set()  # in case the lease's own wake was lost with its loop
        if clone.kept:
            return
        if self.closed:
            return  # still owned (postgres.own): dropped at exit
        self.drops.append(clone.name)
        self._wake_dropper.set()

    def _deliver(self, clone: Clone) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(clone)
                return
        self.ready.append(clone)
        self._peak = max(self._peak, len(self.ready))

    def _fail_waiters(self, exc: BaseException) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    # -- background -----------------------------------------------------------------------

    def _wanted(self) -> int:
        return self.demand.target() + len(self.waiters) - len(self.ready) - len(self.creating)

    async def _worker(self) -> None:
        asyncpg = driver.module()
        admin: Any = None
        backoff = 0.05
        try:
            while True:
                while self._wanted() <= 0:
                    self._wake.clear()
                    await self._wake.wait()
                spare = self._take_spare()
                name = spare or new_name(self.server)
                self.creating.add(name)
                started = time.perf_counter()
                created = spare is not None
                try:
                    if spare is None:
                        if admin is None or admin.is_closed():
                            admin = await driver.connect(self.server)
                        await create_database(admin, self.server, name, self.template_name, grant=self.grant,
                                              then=self.closing_sql(name), mode="database",
                                              origin=self.template_name)
                        created = True
                    # Started here as the clone's own role, parked for the leasing loop to take over.
                    login = self.login(name)
                    conn = await driver.connect(login, name, reuse=True)
                    await driver.close(conn, park=True)
                except Exception as exc:  # reported to waiting leases, then retried
                    self.creating.discard(name)
                    if created:  # the database exists but cannot be used: drop it
                        self.drops.append(name)
                        self._wake_dropper.set()
                    else:
                        disown(name)
                    if spare is not None:
                        continue  # a spare that vanished or broke: make another
                    self._errors += 1
                    self.last_error = exc
                    if isinstance(exc, asyncpg.InvalidCatalogNameError):
                        # The template was dropped under us (prune --templates): build it again.
                        forget_template(self.server, self.template)
                        try:
                            self.template_name = await template_database(self.server, self.template)
                        except Exception as rebuild:  # the waiters get the original error below
                            log.warning("isolated_env: rebuilding the dropped template %s failed: %r",
                                        self.template.name, rebuild)
                        else:
                            continue
                    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
                        exc = no_createdb(self.server, exc)
                    self._fail_waiters(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                self.creating.discard(name)
                if spare is None:
                    self._clones += 1
                    self._clone_ms.append((time.perf_counter() - started) * 1000)
                    self.demand.made(time.perf_counter() - started)
                else:
                    self._spares += 1
                self._deliver(Clone(name, None, login=login))
        finally:
            if admin is not None:
                admin.terminate()

    def _take_spare(self) -> str | None:
        return take_spare(self.spare_key)

    async def _dropper(self) -> None:
        admin: Any = None
        try:
            while True:
                while not self.drops:
                    self._dropped.set()
                    self._wake_dropper.clear()
                    await self._wake_dropper.wait()
                self._dropped.clear()
                name = self.drops.popleft()
                self.dropping.add(name)
                try:
                    if admin is None or admin.is_closed():
                        admin = await driver.connect(self.server)
                    await drop_database(admin, name)
                except Exception as exc:  # left for the exit handler and the reaper
                    self._errors += 1
                    self.last_error = exc
                    await asyncio.sleep(0.05)
                else:
                    self._drops_done += 1
                    disown(name)
                finally:
                    self.dropping.discard(name)
        finally:
            if admin is not None:
                admin.terminate()

    async def settle(self) -> None:
        """Wait until every released database has been dropped."""
        while (self.drops or self.dropping) and not self.closed:
            self._dropped.clear()
            await self._dropped.wait()

    async def aclose(self) -> None:
        """Stop the tasks; unleased clones become spares for the next loop, pending drops are done now."""
        self.closed = True
        scopes, self._scopes = self._scopes, []
        for scope in scopes:
            scope.cancel()
        if self._running:
            # A loop's own failure was counted in statistics() and handed to its waiters; here we
            # only wait for the loops to stop (bounded: the runtime's task group ends them anyway).
            with anyio.move_on_after(10):
                await self._stopped.wait()
        self._fail_waiters(PoolClosed(f"the warm pool of {self.template_name} closed with its event loop"))
        spares = []
        while self.ready:
            clone = self.ready.popleft()
            if clone.conn is not None:
                clone.conn.terminate()
            spares.append(clone.name)
        put_spares(self.spare_key, spares)
        # Clones interrupted mid-creation may or may not exist: drop them if they do.
        leftovers = [*self.drops, *self.dropping, *self.creating]
        self.drops.clear()
        self.dropping.clear()
        self.creating.clear()
        if leftovers:
            with anyio.move_on_after(10):
                try:
                    await self._drop_leftovers(leftovers)
                except Exception as exc:  # still owned: dropped at exit, or by the next start's reaper
                    log.debug("isolated_env: dropping %s on close failed: %r", leftovers, exc)

    async def _drop_leftovers(self, leftovers: list[str]) -> None:
        """Drop clones a closing pool did not finish with, once no CREATE DATABASE of theirs runs."""
        admin = await driver.connect(self.server)
        try:
            # An interrupted CREATE DATABASE may still be running on the server: a DROP
            # before it commits would miss it, so wait for it to finish first.
            for _ in range(5000):
                if not await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                    "pid <> pg_backend_pid() AND query LIKE 'CREATE DATABASE %' AND "
                    "split_part(query, '\"', 2) = ANY($1::text[])",
                    leftovers,
                ):
                    break
                await asyncio.sleep(0.002)
            for name in leftovers:
                await drop_database(admin, name)
                disown(name)
        finally:
            await driver.close(admin)

    def statistics(self) -> WarmPoolStatistics:
        samples = sorted(self._clone_ms)
        return WarmPoolStatistics(
            template=self.template_name,
            target=self.demand.target(),
            capacity=self.capacity,
            ready=len(self.ready),
            peak_ready=self._peak,
            in_flight=len(self.creating),
            clones=self._clones,
            reused_spares=self._spares,
            clone_p50_ms=percentile(samples, 0.5),
            clone_p95_ms=percentile(samples, 0.95),
            drops=self._drops_done,
            pending_drops=len(self.drops) + len(self.dropping),
            starved=self._starved,
            errors=self._errors,
        )


async def warm_pool(
    scope: Runtime, server: PostgresServer, template: PostgresTemplate, template_name: str, target: int,
    tests: PostgresServer | None = None, grant: str | None = None,
) -> WarmPool:
    key = ("postgres-warm", server_key(tests or server), template_name, target)
    warm = scope.objects.get(key)
    if warm is None or warm.closed:
        warm = scope.objects[key] = WarmPool(server, template, template_name, target, tests, grant)
        scope.on_close(warm.aclose)
        # Started in a task of its own: a lease cancelled here would leave a registered pool with
        # no workers, on which every later lease of this template waits out the lease timeout. An
        # anyio shield is not enough: the lease waits from its own loop, and its cancellation
        # reaches this (background) loop as a plain Task.cancel(), which no cancel scope stops.
        starting = asyncio.get_running_loop().create_task(warm.start(scope), name="isolated_env warm pool start")
        with anyio.CancelScope(shield=True):
            await asyncio.shield(starting)
    return warm


def warm_pools(scope: Runtime) -> list[WarmPool]:
    return [v for k, v in list(scope.objects.items()) if isinstance(k, tuple) and k[:1] == ("postgres-warm",)]
