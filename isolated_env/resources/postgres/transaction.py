"""Transaction mode (the default): a pooled connection inside ``BEGIN`` … ``ROLLBACK`` on a
per-process work database.

The test's own ``transaction()`` nests as a savepoint. A test that escapes the outer transaction
(runs ``COMMIT`` itself) is caught on exit: the work database is made a fresh copy of its template
again under the same name (so a ``.dsn`` kept by the tests stays valid), and the test fails with
:class:`IsolationBroken`. A work database dropped from outside is re-created the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ..._config import Settings, run_id
from ..._drivers import asyncpg as driver
from ..._errors import IsolationBroken, PoolError, TeardownError
from ..._pool import Lease, Pool
from ..._runtime import Runtime, current_runtime
from ..._servers.postgres import PostgresServer
from .handle import PostgresHandle
from .janitor import reap_once
from .labels import create_database, disown, drop_database, own, server_key
from .leases import lost as lost_lease
from .roles import Rails, rails

__all__ = ["TransactionHandle", "transaction_mode"]

log = logging.getLogger("isolated_env")

# Set inside the outer transaction; gone once the test ends that transaction (SET LOCAL). Session
# advisory locks survive ROLLBACK, so they are released here and in _CHECK (the same round trips).
_GUARD = "SELECT pg_advisory_unlock_all(); SET LOCAL ie.guard = 'on'"
# Fails when our guard is gone, i.e. the outer transaction was ended by the test (COMMIT, or
# COMMIT followed by its own BEGIN); run in the same round trip as the ROLLBACK.
_CHECK = (
    "DO $$BEGIN IF current_setting('ie.guard', true) IS DISTINCT FROM 'on' THEN "
    "RAISE EXCEPTION 'isolated_env: outer transaction escaped'; END IF; END$$; SELECT pg_advisory_unlock_all()"
)


class TransactionHandle(PostgresHandle):
    """A :class:`PostgresHandle` whose connection is inside the test's outer transaction."""

    def __init__(self, connection: Any, server: PostgresServer, database: str, pool: Any) -> None:
        super().__init__(connection, server, database, "transaction", pool)
        self._transaction: Any = None
        self._escaped = False  # an escape seen by a reset, still to be healed on exit

    async def _begin(self) -> None:
        """Open the outer transaction with its guard, as asyncpg's own top transaction, so that
        the test's ``conn.transaction()`` nests as a savepoint."""
        self._transaction = await driver.begin(self.connection, _GUARD)

    async def _end(self) -> bool:
        """Roll back; True when the test had escaped the outer transaction."""
        tr, self._transaction = self._transaction, None
        return await driver.rollback(self.connection, tr, check=_CHECK)

    async def _reset(self) -> None:
        with driver.translate(f"roll back and begin again on {self.database} of",
                              self.server, failure=TeardownError):
            escaped = await self._end()
            await self._begin()
        if escaped:
            self._escaped = True
            raise IsolationBroken(
                f"the test ended the outer transaction itself (COMMIT/ROLLBACK) on {self.database}; "
                "use `async with db.transaction():` (a savepoint) instead"
            )


# ---------------------------------------------------------------------------------------------
# Work databases: one per process and template, healed in place (same name) when a test escapes.


@dataclasses.dataclass
class _WorkDatabase:
    name: str
    server: PostgresServer  # the administrator's view: creates, drops and heals it
    template: str  # what it is a copy of
    grant: str | None  # the tests' role, given CREATE on it
    owned: bool  # created by us (healable), or the external URL's own database
    generation: int = 0  # bumped by every heal: pools of an older generation hold dead connections
    dirty: bool = False  # a test committed into it: healed once no connection is leased on it
    leased: int = 0  # connections leased on it, in every event loop of the process


_work_lock = threading.Lock()
_work: dict[tuple[str, str, str, str], _WorkDatabase] = {}
_counter = 0


async def _reap_and_close(server: PostgresServer, admin: Any) -> None:
    try:
        await reap_once(server, unlabelled=False, admin=admin)
    finally:
        with anyio.CancelScope(shield=True):
            await driver.close(admin)


async def _work_database(
    scope: Runtime, server: PostgresServer, template: str | None, guard: Rails
) -> _WorkDatabase:
    global _counter
    # The source too: the embedded server named by TEST_POSTGRES_URL is the same host, port and
    # user, but external (no guard rails, work databases from template1, not from the base).
    key = (server.source, server_key(server), server.database, template or "")
    work = _work.get(key)
    if work is not None:
        return work
    asyncpg = driver.module()
    admin = await driver.connect(server)
    handed_off = False
    try:
        work = _work.get(key)  # another task may have made it while we connected
        if work is not None:
            return work
        if server.source == "external" and template is None and server.database != "postgres":
            # The URL names the application's own (migrated) database: use it as it is.
            work = _WorkDatabase(server.database, server, "", None, owned=False)
        else:
            with _work_lock:
                _counter += 1
                name = f"ie_tx_{run_id()}_{os.getpid()}_{_counter}"
            own(name, server)
            try:
                with anyio.CancelScope(shield=True):  # created and labelled, or not there
                    await create_database(admin, server, name, template or guard.base, grant=guard.role)
            except asyncpg.InsufficientPrivilegeError:
                disown(name)
                work = _WorkDatabase(server.database, server, "", None, owned=False)
            else:
                work = _WorkDatabase(name, server, template or guard.base, guard.role, owned=True)
        _work[key] = work
        # The reaper's scan of dead owners' databases, and this connection's goodbye, are no part of
        # the first lease: they go on in the background (settled before the event loop closes).
        await scope.spawn(_reap_and_close, server, admin, name="isolated_env postgres reaper")
        handed_off = True
        return work
    finally:
        if not handed_off:
            await driver.close(admin)


async def _heal(scope: Runtime, work: _WorkDatabase) -> None:
    """Make ``work`` a fresh copy of its template again, under the same name, so a ``.dsn`` kept
    by the tests stays valid; also what re-creates a work database dropped from outside."""
    with driver.translate(f"heal the work database {work.name} (a fresh copy of {work.template}) on",
                          driver.redacted_dsn(work.server), failure=TeardownError):
        admin = await driver.connect(work.server)
        try:
            await drop_database(admin, work.name)  # WITH (FORCE): idle pooled sessions end too
            await create_database(admin, work.server, work.name, work.template, grant=work.grant)
        finally:
            await driver.close(admin)
    work.generation += 1
    work.dirty = False
    for key in [k for k in scope.pools if isinstance(k, tuple) and k[0] == "postgres-tx" and k[2] == work.name]:
        if key[3] < work.generation:  # every role's pool of the old generation (its sessions were ended)
            await scope.pools.pop(key).aclose()


async def _exists(work: _WorkDatabase) -> bool:
    admin = await driver.connect(work.server)
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", work.name))
    finally:
        await driver.close(admin)


def _tx_pool(work: _WorkDatabase, tests: PostgresServer, settings: Settings) -> Pool[Any]:
    async def create() -> Any:
        return await driver.connect(tests, work.name, reuse=True)

    async def destroy(conn: Any) -> None:
        # A clean session outlives its loop, for the next loop's pool (pytest-asyncio's loop per test).
        await driver.close(conn, park=not work.dirty)

    return Pool(
        f"postgres connections ({work.name})",
        create=create,
        destroy=destroy,
        validate=lambda conn: not conn.is_closed(),
        capacity=settings.capacity,
        lease_timeout=settings.lease_timeout,
    )


def _scope_lock(scope: Runtime) -> anyio.Lock:
    lock = scope.objects.get("postgres-lock")
    if lock is None:
        lock = scope.objects["postgres-lock"] = anyio.Lock()
    return lock


async def _lease(
    scope: Runtime, server: PostgresServer, guard: Rails, tests: PostgresServer, settings: Settings,
    template_name: str | None,
) -> tuple[_WorkDatabase, Pool[Any], Lease[Any], TransactionHandle]:
    """A connection of the work database inside the test's outer transaction. A failure of the
    first try (a pooled session ended from outside, the database dropped from outside) is retried
    once, on a re-created database when it is gone."""
    for attempt in (1, 2):
        async with _scope_lock(scope):
            with driver.translate("prepare the work database on", server):
                work = await _work_database(scope, server, template_name, guard)
                if work.owned and work.dirty and work.leased == 0:
                    await _heal(scope, work)  # left dirty by a heal that failed
        key = ("postgres-tx", server_key(tests), work.name, work.generation, settings.capacity)
        pool = scope.pool(key, functools.partial(_tx_pool, work, tests, settings))
        lease = None
        try:
            lease = await pool.acquire()
            handle = TransactionHandle(lease.value, tests, work.name, pool)
            with driver.translate(f"begin the test's transaction on {work.name} of", tests):
                await handle._begin()
        except Exception as exc:
            if lease is not None:
                lease.discard()
                await pool.release(lease)
            if attempt == 2 or not work.owned or isinstance(exc, PoolError):
                raise  # a full pool is not a broken session: waiting again would double the wait
            log.debug("isolated_env: a session of %s failed (%r); trying again", work.name, exc)
            with anyio.CancelScope(shield=True):
                async with _scope_lock(scope):
                    if not await _exists(work):
                        log.info("isolated_env: the work database %s was dropped from outside; re-creating it",
                                 work.name)
                        await _heal(scope, work)
            continue
        except BaseException:
            if lease is not None:
                lease.discard()
                with anyio.CancelScope(shield=True):
                    await pool.release(lease)
            raise
        with _work_lock:
            work.leased += 1
        return work, pool, lease, handle
    raise AssertionError("unreachable")


@asynccontextmanager
async def transaction_mode(
    server: PostgresServer, settings: Settings, template_name: str | None, *, superuser: bool = False
) -> AsyncIterator[PostgresHandle]:
    """A pooled connection inside the test's outer transaction on the work database (a clone of
    ``template_name`` when given); rolled back on exit, healed when the test escaped it.

    ``server`` creates and heals the work database; the test connects as the test role
    (:mod:`.roles`), or as ``server``'s own user with ``superuser=True``.
    """
    scope = await current_runtime()
    guard = await rails(server)
    tests = server if superuser else guard.tests
    work, pool, lease, handle = await _lease(scope, server, guard, tests, settings, template_name)
    escaped = healed = False
    try:
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            try:
                escaped = await handle._end() or handle._escaped
            except Exception as exc:
                # The connection broke (often what the test itself did); it is not reused.
                log.debug("isolated_env: rolling back %s failed (%r); discarding its connection", work.name, exc)
                lease.discard()
            if escaped:
                lease.discard()
                work.dirty = work.dirty or work.owned
            try:
                await pool.release(lease)
            finally:
                with _work_lock:
                    work.leased -= 1
                    heal = work.dirty and work.leased == 0
            if heal:
                # No other connection is leased on it: heal it now, so the next test is clean.
                async with _scope_lock(scope):
                    if work.dirty and work.leased == 0:
                        await _heal(scope, work)
                healed = True
    lost = lost_lease(work.name)
    if lost is not None:  # another run may reap it: the next test gets a work database of its own
        with _work_lock:
            for key in [k for k, v in _work.items() if v is work]:
                del _work[key]
        raise IsolationBroken(lost)
    if escaped:
        if not work.owned:
            healed_how = (f"{work.name} is the server's own database named by TEST_POSTGRES_URL, so the committed "
                          "rows are still there and must be removed by hand")
        elif healed:
            healed_how = ("the work database was made a fresh copy of its template under the same name "
                          "(.dsn stays valid)")
        else:
            healed_how = ("the work database is made a fresh copy of its template under the same name once the "
                          "other connections leased on it come back")
        log.info("isolated_env: a test escaped the outer transaction (COMMIT or ROLLBACK) on %s; %s",
                 work.name, ("healed: " if work.owned else "not healed: ") + healed_how)
        raise IsolationBroken(
            f"the test ended the outer transaction itself (COMMIT or ROLLBACK) on {work.name}, so its "
            f"changes escaped isolation; {healed_how}. Use `async with db.transaction():` (a savepoint) or "
            "isolated_postgres(mode='database') for code that must commit"
        )
