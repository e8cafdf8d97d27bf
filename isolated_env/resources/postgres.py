"""isolated_postgres(): a test's private view of PostgreSQL.

Transaction mode (the default): a pooled connection inside ``BEGIN`` … ``ROLLBACK`` on a per-process
work database. The test's own ``transaction()`` nests as a savepoint. A test that escapes the outer
transaction (runs ``COMMIT`` itself) is caught on exit: the work database is retired and replaced
by a fresh clone, so the next test is clean, and the test fails with :class:`IsolationBroken`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio

from .._config import env_flag, run_id
from .._errors import ConfigError, IsolationBroken, MissingDependencyError, ServiceUnavailable
from .._pool import Pool
from .._resource import current_settings, resource
from .._runtime import current_scope
from .._servers import postgres as servers
from .._servers.postgres import PostgresServer
from .._servers.registry import owner_alive, owner_tag

__all__ = ["PostgresHandle", "isolated_postgres"]

_GUARD = "ie.guard"
# One round trip ends the test: the DO fails when our guard is gone, i.e. the outer transaction
# was ended by the test (COMMIT, or COMMIT followed by its own BEGIN); otherwise ROLLBACK runs.
_END = (
    "DO $$BEGIN IF current_setting('ie.guard', true) IS DISTINCT FROM 'on' THEN "
    "RAISE EXCEPTION 'isolated_env: outer transaction escaped'; END IF; END$$; ROLLBACK"
)
_BEGIN = "BEGIN; SET LOCAL ie.guard = 'on'"


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a core dependency
        raise MissingDependencyError("asyncpg", "postgres", "isolated_postgres()") from None
    return asyncpg


async def connect(server: PostgresServer, database: str | None = None) -> Any:
    """An asyncpg connection, with driver failures translated into ServiceUnavailable."""
    asyncpg = _asyncpg()
    try:
        return await asyncpg.connect(**server.connect_kwargs(database), timeout=30)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(
            "PostgreSQL", f"cannot connect to {server.dsn(database)}: {exc}",
            fix="check that the server is running and accepts connections",
        ) from exc


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
_reaped: set[str] = set()


def server_key(server: PostgresServer) -> str:
    return f"{server.host}:{server.port}:{server.user}"


async def reap_orphans(server: PostgresServer, admin: Any) -> int:
    """Drop ``ie_*`` databases whose owner process died on this host (SIGKILL, crash).

    A live run's databases, and those of other hosts, are never touched.
    """
    rows = await admin.fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') AS owner FROM pg_database "
        "WHERE datname LIKE 'ie\\_%' AND NOT datistemplate"
    )
    dropped = 0
    for row in rows:
        try:
            owner = json.loads(row["owner"] or "{}")
        except ValueError:
            continue
        if owner.get("keep") or owner_alive(owner) is not False:
            continue
        with contextlib.suppress(Exception):
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(row['datname'])} WITH (FORCE)")
            dropped += 1
    return dropped


async def create_database(admin: Any, server: PostgresServer, name: str, template: str, **extra: Any) -> None:
    """CREATE DATABASE … TEMPLATE …, labelled with its owner so a reaper can tell if it is orphaned."""
    strategy = " STRATEGY FILE_COPY" if server.major >= 15 else ""
    await admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}{strategy}")
    label = json.dumps({**owner_tag(), "run": run_id(), **extra})
    await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS '{label.replace(chr(39), chr(39) * 2)}'")


async def _work_database(server: PostgresServer, template: str | None) -> _WorkDatabase:
    global _generation
    key = (server_key(server), server.database, template or "")
    work = _work.get(key)
    if work is not None and not work.retired:
        return work
    asyncpg = _asyncpg()
    admin = await connect(server)
    try:
        if key[0] not in _reaped:
            _reaped.add(key[0])
            await reap_orphans(server, admin)
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
        await admin.close()


async def _drop_if_done(work: _WorkDatabase) -> None:
    if work.owned and work.retired and work.open_connections == 0:
        admin = await connect(work.server)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(work.name)} WITH (FORCE)")
        finally:
            await admin.close()
        disown(work.name)


_owned_lock = threading.Lock()
_owned: dict[str, PostgresServer] = {}  # databases this process created and has not dropped (nor kept)
_exit_registered = False


def own(name: str, server: PostgresServer) -> None:
    """Record a database this process created, so it is dropped at exit if nothing drops it sooner."""
    global _exit_registered
    with _owned_lock:
        _owned[name] = server
        if not _exit_registered:
            _exit_registered = True
            atexit.register(_drop_owned_blocking)


def disown(name: str) -> None:
    with _owned_lock:
        _owned.pop(name, None)


def _drop_owned_blocking() -> None:
    """At exit: drop what is left (the server may outlive us, shared with other processes)."""
    with _owned_lock:
        owned = dict(_owned)
    if not owned:
        return

    async def drop() -> None:
        by_server: dict[str, tuple[PostgresServer, list[str]]] = {}
        for name, server in owned.items():
            by_server.setdefault(server_key(server), (server, []))[1].append(name)
        for server, names in by_server.values():
            admin = await connect(server)
            try:
                for name in names:
                    with contextlib.suppress(Exception):
                        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
                        disown(name)
            finally:
                await admin.close()

    with contextlib.suppress(Exception):
        asyncio.run(drop())


# ---------------------------------------------------------------------------------------------


class PostgresHandle:
    """asyncpg's query API on a test's isolated connection; ``.dsn`` reaches the same database.

    Every asyncpg ``Connection`` method works on the handle (``execute``, ``fetch``, ``fetchrow``,
    ``fetchval``, ``executemany``, ``transaction``, ``copy_*``, ``prepare``, ``cursor`` …).
    """

    def __init__(self, connection: Any, server: PostgresServer, database: str, mode: str, pool: Any) -> None:
        self.connection = connection
        self.server = server
        self.database = database
        self.mode = mode
        self.dsn = server.dsn(database)
        self._ie_pool = pool
        self._transaction: Any = None
        self._escaped = False  # an escape seen by a reset, still to be healed on exit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)

    def __repr__(self) -> str:
        return f"<PostgresHandle mode={self.mode} dsn={self.dsn}>"

    async def _begin(self) -> None:
        self._transaction = await begin(self.connection)

    async def _end(self) -> bool:
        """Roll back; True when the test had escaped the outer transaction."""
        tr, self._transaction = self._transaction, None
        return await end(self.connection, tr)

    async def _ie_reset(self) -> None:
        escaped = await self._end()
        await self._begin()
        if escaped:
            self._escaped = True
            raise IsolationBroken(
                f"the test ended the outer transaction itself (COMMIT/ROLLBACK) on {self.database}; "
                "use `async with db.transaction():` (a savepoint) instead"
            )


async def begin(conn: Any) -> Any:
    """Open the outer transaction with its guard in one round trip, as asyncpg's own top transaction,
    so that the test's ``conn.transaction()`` nests as a savepoint."""
    from asyncpg.transaction import TransactionState

    tr = conn.transaction()
    await conn.execute(_BEGIN)
    tr._state = TransactionState.STARTED
    conn._top_xact = tr
    return tr


async def end(conn: Any, tr: Any) -> bool:
    """Roll back the outer transaction; True when the test had escaped it."""
    asyncpg = _asyncpg()
    from asyncpg.transaction import TransactionState

    if conn._top_xact is tr:
        conn._top_xact = None
    if tr is not None:
        tr._state = TransactionState.ROLLEDBACK
    if not conn.is_in_transaction():
        return True  # COMMIT or ROLLBACK with nothing after it
    try:
        await conn.execute(_END)
    except asyncpg.RaiseError:
        await conn.execute("ROLLBACK")
        return True
    except asyncpg.InFailedSQLTransactionError:
        await conn.execute("ROLLBACK")  # the test's statement failed; its transaction is ours to end
    return False


def _validate(conn: Any) -> bool:
    return not conn.is_closed()


@resource("postgres")
async def isolated_postgres(
    *, mode: str = "transaction", template: Any = None, keep_on_failure: bool | None = None
) -> AsyncIterator[PostgresHandle]:
    """A private view of PostgreSQL for one test, rolled back (or dropped) on exit.

    ``mode="transaction"`` (default): a pooled connection inside a transaction that is rolled back.
    ``mode="database"``: a private database reachable by ``.dsn`` from any driver and connection,
    cloned from ``template`` (a :class:`PostgresTemplate`); ``keep_on_failure`` keeps it when the
    test fails (default: ``ISOLATED_ENV_KEEP_FAILED``, set by ``--isolated-env-keep-failed``).
    """
    if keep_on_failure is None:
        keep_on_failure = env_flag("ISOLATED_ENV_KEEP_FAILED")
    if mode not in {"transaction", "database"}:
        raise ConfigError(f"isolated_postgres(mode={mode!r}): mode must be 'transaction' or 'database'")
    if mode == "database":
        from ._postgres_database import database_mode

        async with database_mode(template=template, keep_on_failure=keep_on_failure) as handle:
            yield handle
        return
    settings = current_settings()
    server = await servers.ensure_server(settings)
    template_name = None
    if template is not None:
        from ._postgres_database import template_database

        template_name = await template_database(server, template)
    scope = await current_scope()
    async with scope_lock(scope):
        work = await _work_database(server, template_name)
    key = ("postgres-tx", server_key(server), work.name, settings.capacity)
    pool = scope.pool(key, lambda: _tx_pool(work, settings))
    async with pool.lease() as lease:
        conn = lease.value
        handle = PostgresHandle(conn, server, work.name, "transaction", pool)
        try:
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
                except Exception:
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
            raise IsolationBroken(
                f"the test ended the outer transaction itself (COMMIT or ROLLBACK) on {work.name}, so its "
                f"changes escaped isolation; {healed}. Use `async with db.transaction():` (a savepoint) or "
                "isolated_postgres(mode='database') for code that must commit"
            )


def _tx_pool(work: _WorkDatabase, settings: Any) -> Pool[Any]:
    async def create() -> Any:
        conn = await connect(work.server, work.name)
        work.open_connections += 1
        return conn

    async def destroy(conn: Any) -> None:
        try:
            await conn.close(timeout=5)
        except Exception:
            conn.terminate()
        finally:
            work.open_connections -= 1
            await _drop_if_done(work)

    return Pool(
        f"postgres connections ({work.name})",
        create=create,
        destroy=destroy,
        validate=_validate,
        capacity=settings.capacity,
        lease_timeout=settings.lease_timeout,
    )




def scope_lock(scope: Any) -> anyio.Lock:
    lock = scope.objects.get("postgres-lock")
    if lock is None:
        lock = scope.objects["postgres-lock"] = anyio.Lock()
    return lock  # type: ignore[no-any-return]
