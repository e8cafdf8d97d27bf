"""Nested scopes of isolated_postgres(): a test that starts from its class's data and leaves it as it was.

Transaction mode: the class's data sits in the outer transaction; each test runs inside a savepoint
rolled back when it ends, and the test's own ``transaction()`` nests below that savepoint.
Database mode: the class's private database becomes the template of a clone per test (PostgreSQL
copies a database only while nobody is connected to it, so the class's own connection is closed
when its first test starts; open another with ``.dsn`` after the tests if the class needs one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio

from ..._background import submit
from ..._drivers import asyncpg as driver
from ..._errors import ConfigError, IsolationBroken, NestingUnsupported, TeardownError
from ..._servers.postgres import PostgresServer
from .handle import Clone, DatabaseHandle, PostgresHandle
from .labels import create_database, disown, drop_database
from .transaction import TransactionHandle

__all__ = ["nested_postgres", "settle_nested"]

log = logging.getLogger("isolated_env")

_savepoints = itertools.count(1)


def nested_postgres(handle: PostgresHandle) -> AbstractAsyncContextManager[PostgresHandle]:
    """A narrower scope of ``handle`` (the ``nest`` of :func:`isolated_postgres`)."""
    if isinstance(handle, TransactionHandle):
        return _savepoint(handle)
    if isinstance(handle, DatabaseHandle) and getattr(handle, "_ie_warm", None) is not None:
        return _clone(handle)
    raise NestingUnsupported("postgres", f"{handle!r} (a superuser's private server) has no template to clone")


@asynccontextmanager
async def _savepoint(handle: TransactionHandle) -> AsyncIterator[PostgresHandle]:
    name = f"ie_scope_{next(_savepoints)}"
    with driver.translate(f"open a savepoint on {handle.database} of", handle.server):
        await handle.connection.execute(f"SAVEPOINT {name}")
    try:
        yield handle
    finally:
        # Shielded: a cancelled test still rolls back, or the class's next test would see its rows.
        with anyio.CancelScope(shield=True):
            try:
                await handle.connection.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            except driver.module().PostgresError as exc:
                handle._escaped = True  # the class's own exit heals the work database
                raise IsolationBroken(
                    f"the test ended the class's transaction on {handle.database} (COMMIT or ROLLBACK), so the "
                    f"class's data and the test's changes left isolation ({exc}); use `async with db.transaction():` "
                    "(a savepoint) instead, or isolated_postgres(mode='database')"
                ) from exc


async def _create(outer: DatabaseHandle, name: str) -> str:
    """Copy the class's database ``outer`` as ``name`` (on any loop: the background's for a spare)."""
    warm = outer._ie_warm  # type: ignore[attr-defined]
    asyncpg = driver.module()
    with driver.translate(f"clone {outer.database} for a nested scope on", driver.redacted_dsn(outer._admin)):
        admin = await driver.connect(outer._admin)
        try:
            with anyio.CancelScope(shield=True):  # created and labelled, or not there
                await create_database(admin, outer._admin, name, outer.database, grant=outer._grant,
                                      then=warm.closing_sql(name), mode="database", origin=outer.database)
        except asyncpg.ObjectInUseError as exc:
            disown(name)
            raise ConfigError(
                f"{outer.database} has other sessions open (PostgreSQL copies a database only while nobody "
                f"is connected to it): close the connections the class's setup opened to its .dsn before "
                f"its tests start ({exc})"
            ) from exc
        finally:
            await driver.close(admin)
    return name


async def _take(outer: DatabaseHandle) -> str:
    """The clone made ahead while the previous test ran, else one made now; then the next one is
    started in the background, so a test waits for a connection, not for a copy."""
    from .spares import new_name

    spare: concurrent.futures.Future[str] | None = outer.__dict__.pop("_ie_spare", None)
    name = None
    if spare is not None:
        try:
            name = await asyncio.wrap_future(spare)
        except ConfigError:
            raise
        except Exception:  # a spare that failed: made again in this loop, where a real failure raises
            name = None
    if name is None:
        name = await _create(outer, new_name(outer._admin))
    outer._ie_spare = submit(_create, outer, new_name(outer._admin))  # type: ignore[attr-defined]
    return name


async def settle_nested(outer: DatabaseHandle) -> None:
    """When the class's database goes: wait for its tests' clones to be dropped, and drop the one
    made ahead for a next test that did not come (in this loop, so none is left half-done when
    the background loop closes at the end of the run)."""
    spare: concurrent.futures.Future[str] | None = outer.__dict__.pop("_ie_spare", None)
    drops: list[concurrent.futures.Future[None]] = outer.__dict__.pop("_ie_drops", [])
    if spare is not None:
        try:
            name = await asyncio.wrap_future(spare)
        except Exception:  # nothing was made (its name was disowned), so nothing to drop
            pass
        else:
            await _drop_now(outer._admin, name)
    for drop in drops:
        try:
            await asyncio.wrap_future(drop)
        except Exception as exc:  # still owned: dropped at exit, or by the next run's reaper
            log.debug("isolated_env: dropping a nested scope's database failed (%r)", exc)


@asynccontextmanager
async def _clone(outer: DatabaseHandle) -> AsyncIterator[PostgresHandle]:
    warm = outer._ie_warm  # type: ignore[attr-defined]
    if not outer.connection.is_closed():
        outer.connection.terminate()  # a template may have no session on it while it is copied
    name = await _take(outer)
    inner: DatabaseHandle | None = None
    try:
        conn = await driver.connect(warm.login(name), name)
        inner = DatabaseHandle(Clone(name, conn), warm.login(name), outer._pool, outer.database, False,
                               admin=outer._admin, grant=outer._grant, closing=warm.closing_sql(name))
        yield inner
    finally:
        if inner is not None and not inner.connection.is_closed():
            inner.connection.terminate()
        # Not waited for here (the class's end waits for them): still owned, so dropped at exit if it fails.
        outer.__dict__.setdefault("_ie_drops", []).append(submit(_drop_now, outer._admin, name))


async def _drop_now(admin_server: PostgresServer, name: str) -> None:
    with driver.translate(f"drop the nested scope's database {name} on", driver.redacted_dsn(admin_server),
                          failure=TeardownError):
        admin = await driver.connect(admin_server)
        try:
            await drop_database(admin, name)
        finally:
            await driver.close(admin)
    disown(name)
