"""isolated_clickhouse(): a private ClickHouse database for each test, dropped on release.

Each pooled slot is a clickhouse-connect async client bound to a database ``ie_<run>_<pid>_<n>``
created ahead of the lease; on release the slot moves to a fresh, empty database made ahead of
time and the used one is dropped in the background (a fresh name, so nothing a test made outlives
it, and the release costs no DDL round trip). The owner of every database (host, pid,
process start time) is recorded in its ``COMMENT``; the first lease of a process drops the
databases of owners that have died (a SIGKILLed run leaves nothing behind after the next start).

``mode="prefix"`` is for servers where the user may not create databases: the test shares the
server's database and names its tables with ``handle.table("events")`` (``<prefix>events``);
every table carrying the prefix is dropped on release. The owner is recorded in the comment of a
marker table ``<prefix>_owner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from typing import Any, Literal

from .._config import run_id
from .._errors import ConfigError, MissingDependencyError
from .._pool import Pool
from .._resource import current_settings, resource
from .._runtime import current_scope
from .._servers import clickhouse as servers
from .._servers.clickhouse import ClickHouseServer
from .._servers.registry import owner_alive, owner_tag

__all__ = ["ClickHouseHandle", "isolated_clickhouse", "prune", "settle"]

Mode = Literal["database", "prefix"]

_counter = itertools.count(1)
_reaped: set[tuple[str, str, str, str]] = set()


def _clickhouse_connect() -> Any:
    try:
        import clickhouse_connect
    except ImportError:
        raise MissingDependencyError("clickhouse-connect", "clickhouse", "isolated_clickhouse()") from None
    return clickhouse_connect


def _owner_comment() -> str:
    return json.dumps({"by": "isolated_env", "run": run_id(), "owner": owner_tag()}, separators=(",", ":"))


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _dead(comment: str) -> bool:
    """True when ``comment`` is one of ours and its owner is provably dead (never for another host)."""
    try:
        data = json.loads(comment)
    except ValueError:
        return False
    if not isinstance(data, dict) or data.get("by") != "isolated_env":
        return False
    if not isinstance(data.get("owner"), dict):
        return False
    return owner_alive(data["owner"]) is False


async def _connect(server: ClickHouseServer, database: str) -> Any:
    return await _clickhouse_connect().get_async_client(**server.client_kwargs(database))


async def _reap(admin: Any, server: ClickHouseServer, mode: Mode) -> list[str]:
    """Drop what isolated_env created for owners that have died; returns what was dropped."""
    dropped: list[str] = []
    if mode == "database":
        rows = (
            await admin.query("SELECT name, comment FROM system.databases WHERE startsWith(name, 'ie_')")
        ).result_rows
        for name, comment in rows:
            if _dead(comment):
                await admin.command(f"DROP DATABASE IF EXISTS {_ident(name)} SYNC", use_database=False)
                dropped.append(name)
        return dropped
    rows = (
        await admin.query(
            "SELECT name, comment FROM system.tables WHERE database = {db:String} "
            "AND startsWith(name, 'ie_') AND endsWith(name, '__owner')",
            parameters={"db": server.database},
        )
    ).result_rows
    for marker, comment in rows:
        if _dead(comment):
            prefix = marker[: -len("_owner")]
            dropped += await _drop_prefixed(admin, server.database, prefix, keep=None)
    return dropped


async def _drop_prefixed(client: Any, database: str, prefix: str, keep: str | None) -> list[str]:
    rows = (
        await client.query(
            "SELECT name, engine FROM system.tables "
            "WHERE database = {db:String} AND startsWith(name, {p:String})",
            parameters={"db": database, "p": prefix},
        )
    ).result_rows
    dropped = []
    for name, engine in rows:
        if name == keep:
            continue
        kind = "DICTIONARY" if engine == "Dictionary" else "TABLE"
        await client.command(f"DROP {kind} IF EXISTS {_ident(database)}.{_ident(name)} SYNC")
        dropped.append(f"{database}.{name}")
    return dropped


class _Slot:
    __slots__ = ("client", "database", "prefix")

    def __init__(self, client: Any, database: str, prefix: str) -> None:
        self.client = client
        self.database = database
        self.prefix = prefix

    @property
    def marker(self) -> str:
        return self.prefix + "_owner"


class _Slots:
    """Creates, cleans and drops private databases (or table prefixes) on one server for one event loop.

    Each slot's own client runs the DDL of its slot (``use_database=False``), so no extra client is
    opened per event loop.
    """

    SPARES = 2  # empty databases kept ready so that a release swaps instead of waiting for DDL

    def __init__(self, server: ClickHouseServer, mode: Mode) -> None:
        self.server = server
        self.mode = mode
        self.spares: list[str] = []
        self.retired: list[str] = []
        self.dropping = 0  # retired databases not yet dropped (in the list, or being dropped)
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._admin: Any = None

    def _name(self) -> str:
        return f"ie_{run_id()}_{os.getpid()}_{next(_counter)}"

    async def _make_database(self, client: Any, name: str) -> None:
        await client.command(
            f"CREATE DATABASE {_ident(name)} COMMENT {_literal(_owner_comment())}", use_database=False
        )

    async def _drop_database(self, client: Any, name: str) -> None:
        await client.command(f"DROP DATABASE IF EXISTS {_ident(name)} SYNC", use_database=False)

    async def create(self) -> _Slot:
        client = await _connect(self.server, self.server.database)
        try:
            key = (self.server.source, self.server.url, self.server.database, self.mode)
            if key not in _reaped:
                _reaped.add(key)
                await _reap(client, self.server, self.mode)
            name = self._name()
            if self.mode == "prefix":
                slot = _Slot(client, self.server.database, name + "_")
                await client.command(
                    f"CREATE TABLE {_ident(slot.database)}.{_ident(slot.marker)} (x UInt8) ENGINE = Memory "
                    f"COMMENT {_literal(_owner_comment())}"
                )
                return slot
            await self._make_database(client, name)
        except BaseException:
            await client.close()
            raise
        client.database = name
        return _Slot(client, name, "")

    async def clean(self, slot: _Slot) -> None:
        """Back to empty, keeping the names (``Environment.reset`` between Hypothesis examples)."""
        if self.mode == "database":
            await self._drop_database(slot.client, slot.database)
            await self._make_database(slot.client, slot.database)
        else:
            await _drop_prefixed(slot.client, slot.database, slot.prefix, keep=slot.marker)

    async def reset(self, slot: _Slot) -> None:
        """On release: the slot moves to a fresh database (a spare made ahead of time, else a new one)
        and the used one is dropped in the background."""
        if self.mode == "prefix":
            await self.clean(slot)
            return
        if self.spares:
            name = self.spares.pop()
        else:
            name = self._name()
            await self._make_database(slot.client, name)
        self.retired.append(slot.database)
        self.dropping += 1
        slot.database = slot.client.database = name
        self._kick()

    def _kick(self) -> None:
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="isolated-env clickhouse spares"
            )

    async def _work(self) -> None:
        """Drops retired databases and keeps SPARES empty ones ready, off the test's path."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._admin is None:
                self._admin = await _connect(self.server, self.server.database)
            while self.retired:
                name = self.retired.pop()
                try:
                    await self._drop_database(self._admin, name)
                except Exception:
                    self.retired.append(name)  # retried by the next worker, or at close
                    raise
                self.dropping -= 1
            while len(self.spares) < self.SPARES:
                name = self._name()
                await self._make_database(self._admin, name)
                self.spares.append(name)

    async def settle(self) -> None:
        """Wait until every released database has been dropped."""
        while self.dropping:
            if self._worker is not None and self._worker.done() and self._worker.exception() is not None:
                raise self._worker.exception()  # type: ignore[misc]
            self._kick()
            await asyncio.sleep(0.002)

    async def aclose(self) -> None:
        """At the event loop's end: stop the worker, drop the retired and spare databases."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(BaseException):
                await self._worker
        leftovers = self.retired + self.spares
        self.retired, self.spares = [], []
        if not leftovers:
            if self._admin is not None:
                await self._admin.close()
            return
        admin = self._admin or await _connect(self.server, self.server.database)
        try:
            for name in leftovers:
                with contextlib.suppress(Exception):
                    await self._drop_database(admin, name)
        finally:
            await admin.close()

    async def destroy(self, slot: _Slot) -> None:
        try:
            if self.mode == "database":
                await self._drop_database(slot.client, slot.database)
            else:
                await _drop_prefixed(slot.client, slot.database, slot.prefix, keep=None)
        finally:
            await slot.client.close()


class ClickHouseHandle:
    """The clickhouse-connect async client of one test, bound to its private database.

    Every client method (``command``, ``query``, ``insert``, ``query_df``, ...) is available on the
    handle; ``.client`` is the client itself, ``.database`` the private database, ``.url`` a DSN
    (with credentials) reaching that database from another client or process. In prefix mode,
    ``.prefix`` starts the name of every table of the test: ``handle.table("events")``.
    """

    def __init__(self, slot: _Slot, slots: _Slots, pool: Pool[_Slot]) -> None:
        self.client: Any = slot.client
        self.database: str = slot.database
        self.prefix: str = slot.prefix
        self.mode: Mode = slots.mode
        self.server: ClickHouseServer = slots.server
        self.url: str = slots.server.dsn(slot.database)
        self._slot = slot
        self._slots = slots
        self._ie_pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __repr__(self) -> str:
        where = f"database={self.database}" + (f" prefix={self.prefix}" if self.prefix else "")
        return f"<ClickHouseHandle {where} server={self.server.url}>"

    def table(self, name: str) -> str:
        """The name to give a table of this test: ``<prefix><name>`` in prefix mode, ``name`` otherwise."""
        return self.prefix + name

    async def _ie_reset(self) -> None:
        await self._slots.clean(self._slot)


@resource("clickhouse")
async def isolated_clickhouse(*, mode: Mode = "database") -> AsyncIterator[ClickHouseHandle]:
    """A private, empty ClickHouse database for one test (``mode="prefix"``: a private table prefix
    in the server's database, for servers where the user may not create databases)."""
    if mode not in ("database", "prefix"):
        raise ConfigError(
            f"isolated_clickhouse(mode={mode!r}): choose mode='database' (default) or mode='prefix'"
        )
    _clickhouse_connect()
    settings = current_settings()
    server = await servers.ensure_server(settings)
    scope = await current_scope()
    key = ("clickhouse", server.source, server.url, server.username, server.database, mode, settings.capacity)
    pool: Pool[_Slot] | None = scope.pools.get(key)
    slots: _Slots | None = scope.objects.get(key)
    if pool is None or pool.closed or slots is None:
        made = slots = scope.objects[key] = _Slots(server, mode)
        scope.on_close(made.aclose)
        pool = scope.pool(
            key,
            lambda: Pool(
                f"clickhouse {'databases' if mode == 'database' else 'table prefixes'} ({server.url})",
                create=made.create,
                reset=made.reset,
                destroy=made.destroy,
                capacity=settings.capacity,
                lease_timeout=settings.lease_timeout,
            ),
        )
    async with pool.lease() as lease:
        yield ClickHouseHandle(lease.value, slots, pool)


async def settle() -> None:
    """Wait until the databases released in this event loop have been dropped (they are dropped in
    the background, off the test's path)."""
    for slots in list((await current_scope()).objects.values()):
        if isinstance(slots, _Slots):
            await slots.settle()


async def prune(mode: Mode = "database") -> list[str]:
    """Drop the databases (or prefixed tables) whose owner process has died; for ``isolated-env prune``."""
    server = await servers.ensure_server(current_settings())
    admin = await _connect(server, server.database)
    try:
        return await _reap(admin, server, mode)
    finally:
        await admin.close()
