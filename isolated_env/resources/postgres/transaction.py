"""Transaction mode (the default): a pooled connection inside ``BEGIN`` … ``ROLLBACK`` on a
per-process work database.

The test's own ``transaction()`` nests as a savepoint. A test that escapes the outer transaction
(runs ``COMMIT`` itself) is caught on exit: the work database is retired and replaced by a fresh
clone, so the next test is clean, and the test fails with :class:`IsolationBroken`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ..._config import Settings, run_id
from ..._drivers import asyncpg as driver
from ..._errors import IsolationBroken, TeardownError
from ..._pool import Pool
from ..._runtime import Runtime, current_runtime
from ..._servers.postgres import PostgresServer
from .handle import PostgresHandle
from .janitor import reap_once
from .labels import create_database, disown, drop_database, own, server_key

__all__ = ["TransactionHandle", "transaction_mode"]

log = logging.getLogger("isolated_env")

# Set inside the outer transaction; gone once the test ends that transaction (SET LOCAL).
_GUARD = "SET LOCAL ie.guard = 'on'"
# Fails when our guard is gone, i.e. the outer transaction was ended by the test (COMMIT, or
# COMMIT followed by its own BEGIN); run in the same round trip as the ROLLBACK.
_CHECK = (
    "DO $$BEGIN IF current_setting('ie.guard', true) IS DISTINCT FROM 'on' THEN "
    "RAISE EXCEPTION 'isolated_env: outer transaction escaped'; END IF; END$$"
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
# Work databases: one per process and template, replaced (a new generation) when a test escapes.


@dataclasses.dataclass
class _WorkDatabase:
    name: str
    server: PostgresServer
    owned: bool  # created by us (droppable), or the external URL's own database
    retired: bool = False
    open_connections: int = 0


_work_lock = threading.Lock()
_work: dict[tuple[str, str, str], _WorkDatabase] = {}
_generation = 0


async def _work_database(server: PostgresServer, template: str | None) -> _WorkDatabase:
    global _generation
    key = (server_key(server), server.database, template or "")
    work = _work.get(key)
    if work is not None and not work.retired:
        return work
    asyncpg = driver.module()
    admin = await driver.connect(server)
    try:
        await reap_once(server, unlabelled=False, admin=admin)
        work = _work.get(key)  # another task may have made it while we connected
        if work is not None and not work.retired:
            return work
        if server.source == "external" and template is None and server.database != "postgres":
            # The URL names the application's own (migrated) database: use it as it is.
            work = _WorkDatabase(server.database, server, owned=False)
        else:
            with _work_lock:
                _generation += 1
                name = f"ie_tx_{run_id()}_{os.getpid()}_{_generation}"
            try:
                await create_database(admin, server, name, template or "template1")
            except asyncpg.InsufficientPrivilegeError:
                work = _WorkDatabase(server.database, server, owned=False)
            else:
                work = _WorkDatabase(name, server, owned=True)
                own(name, server)
        _work[key] = work
        return work
    finally:
        await driver.close(admin)


async def _drop_if_done(work: _WorkDatabase) -> None:
    if work.owned and work.retired and work.open_connections == 0:
        with driver.translate(f"drop the retired work database {work.name} on", driver.redacted_dsn(work.server),
                              failure=TeardownError):
            admin = await driver.connect(work.server)
            try:
                await drop_database(admin, work.name)
            finally:
                await driver.close(admin)
        disown(work.name)


def _tx_pool(work: _WorkDatabase, settings: Settings) -> Pool[Any]:
    async def create() -> Any:
        conn = await driver.connect(work.server, work.name, reuse=True)
        work.open_connections += 1
        return conn

    async def destroy(conn: Any) -> None:
        try:
            # A clean session outlives its loop, for the next loop's pool (pytest-asyncio's loop per test).
            await driver.close(conn, park=not work.retired)
        finally:
            work.open_connections -= 1
            await _drop_if_done(work)

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


@asynccontextmanager
async def transaction_mode(
    server: PostgresServer, settings: Settings, template_name: str | None
) -> AsyncIterator[PostgresHandle]:
    """A pooled connection inside the test's outer transaction on the work database (a clone of
    ``template_name`` when given); rolled back on exit, healed when the test escaped it."""
    scope = await current_runtime()
    async with _scope_lock(scope):
        with driver.translate("prepare the work database on", server):
            work = await _work_database(server, template_name)
    key = ("postgres-tx", server_key(server), work.name, settings.capacity)
    pool = scope.pool(key, lambda: _tx_pool(work, settings))
    async with pool.lease() as lease:
        conn = lease.value
        handle = TransactionHandle(conn, server, work.name, pool)
        try:
            with driver.translate(f"begin the test's transaction on {work.name} of", server):
                await handle._begin()
        except BaseException:
            lease.discard()
            raise
        escaped = False
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
                    if work.owned and not work.retired:
                        # New leases go to a fresh work database; the old one is dropped once the
                        # connections still leased on it come back.
                        work.retired = True
                        if scope.pools.get(key) is pool:
                            del scope.pools[key]
                        await pool.aclose()
        if escaped:
            healed = "the work database was replaced by a fresh copy, so later tests are clean" if work.owned else (
                f"{work.name} is the server's own database named by TEST_POSTGRES_URL, so the committed rows "
                "are still there and must be removed by hand"
            )
            log.info("isolated_env: a test escaped the outer transaction (COMMIT or ROLLBACK) on %s; %s",
                     work.name, "healed: " + healed if work.owned else "not healed: " + healed)
            raise IsolationBroken(
                f"the test ended the outer transaction itself (COMMIT or ROLLBACK) on {work.name}, so its "
                f"changes escaped isolation; {healed}. Use `async with db.transaction():` (a savepoint) or "
                "isolated_postgres(mode='database') for code that must commit"
            )
