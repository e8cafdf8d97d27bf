"""isolated_clickhouse(): a private ClickHouse database for each test, dropped on release.

Each pooled slot is a clickhouse-connect async client bound to a database ``ie_<run>_<pid>_<n>``
created ahead of the lease; on release the slot moves to a fresh, empty database made ahead of
time and the used one is dropped in the background (a fresh name, so nothing a test made outlives
it, and the release costs no DDL round trip). The owner of every database (host, pid,
process start time) is recorded in its ``COMMENT``; the first lease of a process drops the
databases of owners that have died (a SIGKILLed run leaves nothing behind after the next start).

``mode="prefix"`` is for servers where the user may not create databases: the test shares the
server's database and names its tables with ``handle.table("events")`` (``<prefix>events``);
every table carrying the prefix is dropped on release. The owner (and, on an external server, the
prefix's lease) is recorded in the comment of a marker table ``<prefix>_owner``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from .._config import Settings
from .._contract import Kept, Outcome, PooledResource, current_settings
from .._drivers import clickhouse as ch_driver
from .._errors import ConfigError, IsolationBroken, TeardownError
from .._ownership import Scope
from .._redact import redact_url
from .._resource import ResourceContext
from .._runtime import current_runtime
from .._servers import clickhouse as servers
from .._servers.clickhouse import ClickHouseServer
from ._clickhouse_leases import lost as lease_lost
from ._clickhouse_slots import Mode, _Slot, _Slots
from ._clickhouse_slots import connect as _connect
from ._clickhouse_slots import reap as _reap
from ._died import died as _died
from ._died import watch as _watch

__all__ = ["ClickHouseHandle", "ClickHouseResource", "isolated_clickhouse", "prune", "settle"]

_ALL = Scope()

if TYPE_CHECKING:
    # Type checkers see every client method on the handle; at run time the handle is a plain
    # object passing them to ``.client`` (``isinstance(handle, AsyncClient)`` is False).
    from clickhouse_connect.driver.asyncclient import AsyncClient
    from clickhouse_connect.driver.asyncclient import AsyncClient as _Methods
else:
    _Methods = object


class ClickHouseHandle(_Methods):
    """The clickhouse-connect async client of one test, bound to its private database.

    Every client method (``command``, ``query``, ``insert``, ``query_df``, ...) is available on the
    handle; ``.client`` is the client itself, ``.database`` the private database, ``.url`` a DSN
    (with credentials) reaching that database from another client or process. In prefix mode,
    ``.prefix`` starts the name of every table of the test: ``handle.table("events")``.
    """

    def __init__(self, slot: _Slot, slots: _Slots) -> None:
        self.client: AsyncClient = slot.client
        self.database: str = slot.database
        self.prefix: str = slot.prefix
        self.mode: Mode = slots.mode
        self.server: ClickHouseServer = slots.server
        self.url: str = slot.base + quote(slot.database, safe="")

    if not TYPE_CHECKING:  # hidden from type checkers, or a typo would type-check as Any

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

    def __repr__(self) -> str:
        where = f"database={self.database}" + (f" prefix={self.prefix}" if self.prefix else "")
        return f"<ClickHouseHandle {where} server={redact_url(self.server.url)}>"

    def table(self, name: str) -> str:
        """The name to give a table of this test: ``<prefix><name>`` in prefix mode, ``name`` otherwise."""
        return self.prefix + name



class ClickHouseResource(PooledResource[_Slot, ClickHouseHandle]):
    """A private, empty ClickHouse database for one test (``mode="prefix"``: a private table prefix
    in the server's database, for servers where the user may not create databases)."""

    kind: ClassVar[str] = "clickhouse"
    provider: ClassVar[str | None] = "clickhouse"
    extra: ClassVar[str | None] = "clickhouse"
    # The slot released first: its released database has most likely been looked at (a spare again)
    # by the time it is leased. The one released last, under tests that start together and wait for
    # nothing, took every lease of the burst and ran out of spares.
    reuse_oldest: ClassVar[bool] = True

    def __init__(self, *, mode: Mode = "database", keep_on_failure: bool | None = None) -> None:
        if mode not in ("database", "prefix"):
            raise ConfigError(
                f"isolated_clickhouse(mode={mode!r}): choose mode='database' (default) or mode='prefix'"
            )
        self.mode: Mode = mode
        self.keep_on_failure = keep_on_failure

    async def prepare(self) -> None:
        ch_driver.module()
        self.server = await servers.ensure_server(current_settings())
        runtime = self.runtime
        key = self._slots_key()
        slots: _Slots | None = runtime.objects.get(key)
        if slots is None:
            slots = runtime.objects[key] = _Slots(self.server, self.mode, runtime)
            runtime.on_close(slots.aclose)
        self.slots = slots

    def _slots_key(self) -> Hashable:
        server = self.server
        return ("clickhouse", server.source, server.url, server.username, server.database, self.mode)

    def pool_key(self) -> Hashable:
        return (*self._slots_key(), current_settings().capacity)  # type: ignore[misc]

    def pool_name(self) -> str:
        what = "databases" if self.mode == "database" else "table prefixes"
        return f"clickhouse {what} ({redact_url(self.server.url)})"

    async def create(self) -> _Slot:
        with ch_driver.translate(f"creating a private database on {redact_url(self.server.url)}"):
            return await self.slots.create()

    async def clean(self, item: _Slot) -> None:
        with ch_driver.translate(f"releasing database {item.database}", failure=TeardownError):
            await self.slots.recycle(item)

    async def destroy(self, item: _Slot) -> None:
        with ch_driver.translate(f"dropping database {item.database}", failure=TeardownError):
            await self.slots.destroy(item)

    def wrap(self, item: _Slot) -> ClickHouseHandle:
        return ClickHouseHandle(item, self.slots)

    async def died(self) -> BaseException | None:
        return await _died("clickhouse", self.server, self.server.url)

    async def reset(self, handle: ClickHouseHandle) -> None:
        # In place, keeping the names the test already holds (the release swaps databases instead).
        if self._lease is not None:
            await self.slots.clean(self._lease.value)

    async def release(self, handle: ClickHouseHandle, outcome: Outcome) -> Kept | None:
        """Give the slot back; a lease lost while the test held it fails the test (after the
        release, which drops what the slot held rather than hand it out again)."""
        lease = self._lease
        lost = lease_lost(lease.value.lease) if lease is not None else None
        kept = await super().release(handle, outcome)
        if lost is not None:
            raise IsolationBroken(lost)
        return kept

    async def keep(self, item: _Slot) -> Kept:
        with ch_driver.translate(f"keeping database {item.database}", failure=TeardownError):
            return await self.slots.keep(item)

    @classmethod
    async def self_check(cls) -> None:
        """``isolated-env doctor``: a concurrent test never sees another's table."""
        async with isolated_clickhouse() as a, isolated_clickhouse() as b:
            await a.command("CREATE TABLE ie_doctor (x Int32) ENGINE = Memory")
            tables = await b.query("SHOW TABLES")
            if "ie_doctor" in str(tables.result_rows) or a.database == b.database:
                raise IsolationBroken("isolation self-check failed: a concurrent test saw another's table")

    @classmethod
    async def reap(
        cls, settings: Settings, *, kept: bool = False, scope: Scope = _ALL, dry_run: bool = False
    ) -> list[str]:
        """``isolated-env prune``: databases and table prefixes whose owner died or whose lease ended
        (``scope`` narrows it, ``dry_run`` only lists them)."""
        server = await servers.ensure_server(settings)
        admin = await _connect(server, server.database)
        try:
            return [
                *await _reap(admin, server, "database", kept=kept, scope=scope, dry_run=dry_run),
                *await _reap(admin, server, "prefix", kept=kept, scope=scope, dry_run=dry_run),
            ]
        finally:
            await admin.close()


def isolated_clickhouse(
    *, mode: Mode = "database", keep_on_failure: bool | None = None
) -> ResourceContext[ClickHouseHandle]:
    """A private, empty ClickHouse database for one test (``mode="prefix"``: a private table prefix
    in the server's database, for servers where the user may not create databases)."""
    return ResourceContext(ClickHouseResource(mode=mode, keep_on_failure=keep_on_failure))


isolated_clickhouse.resource_class = ClickHouseResource  # type: ignore[attr-defined]
_watch("clickhouse", lambda server: server.url)


async def settle() -> None:
    """Wait for the background work of this event loop: the databases released in it dropped (or
    spares again) and the spares made, all off the test's path."""
    for slots in list((await current_runtime()).objects.values()):
        if isinstance(slots, _Slots):
            await slots.settle()


async def prune(
    mode: Mode = "database", *, kept: bool = False, scope: Scope = _ALL, dry_run: bool = False
) -> list[str]:
    """Drop the databases (or prefixed tables) whose owner process has died or whose lease ended;
    for ``isolated-env prune``."""
    server = await servers.ensure_server(current_settings())
    admin = await _connect(server, server.database)
    try:
        return await _reap(admin, server, mode, kept=kept, scope=scope, dry_run=dry_run)
    finally:
        await admin.close()
