"""The private databases (or table prefixes) behind isolated_clickhouse, on one server and loop:
made, swapped on release, dropped in the background, kept for a failed test, reaped when their
lease has ended or their owner has died (:mod:`._clickhouse_reap`)."""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Literal

import anyio

from .._config import run_id
from .._contract import Kept
from .._drivers import clickhouse as ch_driver
from .._errors import ConfigError
from .._redact import redact_url
from .._runtime import Runtime
from .._servers.clickhouse import ClickHouseServer
from ._clickhouse_leases import Looks, hold, hold_marker, let_go
from ._clickhouse_leases import check as check_lease
from ._clickhouse_leases import comment as lease_comment
from ._clickhouse_reap import drop_prefixed as _drop_prefixed
from ._clickhouse_reap import reap

__all__ = ["Mode", "connect", "reap"]

log = logging.getLogger("isolated_env")

Mode = Literal["database", "prefix"]

_counter = itertools.count(1)
_reaped: set[tuple[str, str, str, str]] = set()


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


async def connect(server: ClickHouseServer, database: str) -> Any:
    """An admin client of ``server``. Without a session: it may run requests concurrently."""
    return await ch_driver.connect(**server.client_kwargs(database), autogenerate_session_id=False)


class _Slot:
    __slots__ = ("base", "client", "database", "prefix", "user")

    def __init__(self, client: Any, database: str, prefix: str, user: str | None = None, base: str = "") -> None:
        self.client = client
        self.database = database
        self.prefix = prefix
        # The slot's lease user on a guarded server: its client reaches only the slot's database,
        # so the slot's DDL goes through the admin client. None: the client is the admin user.
        self.user = user
        self.base = base  # its DSN up to the database (credentials derived once per slot)

    @property
    def marker(self) -> str:
        return self.prefix + "_owner"

    @property
    def lease(self) -> str:
        """The name its lease is held by: the database, or in prefix mode ``<database>.<marker>``."""
        return f"{self.database}.{self.marker}" if self.prefix else self.database


class _Slots:
    """Creates, cleans and drops private databases (or table prefixes) on one server for one event loop.

    Each slot's own client runs the DDL of its slot (``use_database=False``), so no extra client is
    opened per event loop.
    """

    SPARES = 4  # empty databases kept ready (and one per live slot) so that a release swaps, not waits for DDL
    # On a guarded server a database belongs to one slot's user (its name starts with the user's): each
    # slot keeps spares of its own (four: releases in a row, before the worker ran, still swap).
    SLOT_SPARES = 4

    def __init__(self, server: ClickHouseServer, mode: Mode, runtime: Runtime) -> None:
        self.server = server
        self.mode = mode
        self.runtime = runtime
        self.guarded = server.guarded and mode == "database"
        self.spare_sets: dict[str | None, list[str]] = {} if self.guarded else {None: []}
        self.retired: list[str] = []
        # Released databases not yet looked at: an untouched one becomes a spare again, the rest retire.
        self.returned: list[tuple[str, str | None]] = []
        self.dropping = 0  # released databases not yet dropped or reused (in the lists, or in hand)
        self.live = 0  # slots made and not destroyed
        self.releases = 0  # a loop that releases once (a loop per test) makes no spares
        self.unspared = 0  # releases that found no spare (each waited for a look, or for DDL)
        self._working = False
        self._admin: Any = None
        self._admin_lock = anyio.Lock()
        self._looks = Looks()  # one SELECT at a time answers every release and the worker waiting on one
        self._looking: list[tuple[str, str | None]] = []  # released databases being looked at now

    def _name(self, user: str | None = None) -> str:
        if user is not None:
            return f"{user}_{next(_counter)}"
        return f"ie_{run_id()}_{os.getpid()}_{next(_counter)}"

    def _admin_base(self) -> str:
        return self.server.dsn("x")[:-1]

    @property
    def spares(self) -> list[str]:
        return [name for names in self.spare_sets.values() for name in names]

    async def _admin_client(self) -> Any:
        async with self._admin_lock:  # one for the loop, however many slots are made at once
            if self._admin is None:
                self._admin = await connect(self.server, self.server.database)
        return self._admin

    async def _ddl(self, slot: _Slot) -> Any:
        """The client that runs DDL for ``slot``: its own, or the admin one for a lease user's slot."""
        return slot.client if slot.user is None else await self._admin_client()

    async def _make_database(self, client: Any, name: str) -> None:
        label = await lease_comment(client, self.server)
        await client.command(f"CREATE DATABASE {_ident(name)} COMMENT {_literal(label)}", use_database=False)
        hold(self.server, name)

    async def _drop_database(self, client: Any, name: str) -> None:
        let_go(name)
        await client.command(f"DROP DATABASE IF EXISTS {_ident(name)} SYNC", use_database=False)

    async def create(self) -> _Slot:
        if self.guarded:
            return await self._create_guarded()
        # The test's client, with a session of its own (temporary tables live in one), as before.
        client = await ch_driver.connect(**self.server.client_kwargs(self.server.database))
        try:
            key = (self.server.source, self.server.url, self.server.database, self.mode)
            if key not in _reaped:
                _reaped.add(key)
                await reap(client, self.server, self.mode)
            name = self._name()
            if self.mode == "prefix":
                slot = _Slot(client, self.server.database, name + "_", base=self._admin_base())
                await client.command(
                    f"CREATE TABLE {_ident(slot.database)}.{_ident(slot.marker)} (x UInt8) ENGINE = Memory "
                    f"COMMENT {_literal(await lease_comment(client, self.server))}"
                )
                hold_marker(self.server, slot.lease)
                return slot
            await self._make_database(client, name)
        except BaseException:
            await client.close()
            raise
        client.database = name
        self.live += 1
        return _Slot(client, name, "", base=self._admin_base())

    async def _create_guarded(self) -> _Slot:
        admin = await self._admin_client()
        key = (self.server.source, self.server.url, self.server.database, self.mode)
        if key not in _reaped:
            _reaped.add(key)
            await reap(admin, self.server, self.mode)
        user = f"ie_{run_id()}_{os.getpid()}_s{next(_counter)}"
        name = self._name(user)
        await self._make_database(admin, name)
        try:
            client = await ch_driver.connect(**self.server.lease_kwargs(user, name))
        except BaseException:
            await self._drop_database(admin, name)
            raise
        self.spare_sets[user] = []
        return _Slot(client, name, "", user, self.server.lease_dsn(user, "x")[:-1])

    async def clean(self, slot: _Slot) -> None:
        """Back to empty, keeping the names (``Environment.reset`` between Hypothesis examples)."""
        if self.mode == "database":
            ddl = await self._ddl(slot)
            await self._drop_database(ddl, slot.database)
            await self._make_database(ddl, slot.database)
        else:
            await _drop_prefixed(slot.client, slot.database, slot.prefix, keep=slot.marker)

    async def recycle(self, slot: _Slot) -> None:
        """On release: the slot moves to a spare made ahead of time, and the worker reuses the used
        database as a spare if the test made nothing in it, else drops it. Without a spare, an
        untouched database stays with the slot (one SELECT, shared with the releases and the worker
        looking at the same time, which also brings the returned databases back as spares); a used
        one is replaced in-line."""
        if self.mode == "prefix":
            check_lease(slot.lease)  # lost while the test held it: another run may have reaped it
            await self.clean(slot)
            return
        check_lease(slot.database)  # lost while the test held it: another run may have reaped it
        spares = self.spare_sets.setdefault(slot.user, [])
        self.releases += 1
        if not spares and any(owner == slot.user for _, owner in self._looking):
            await self._looks.settled()  # the look in flight brings this user's returned databases back
        if spares:
            name = spares.pop()
            self.returned.append((slot.database, slot.user))
        else:
            self.unspared += 1
            if await self._reclaim(slot.database):
                if self.releases > 1:  # nothing was made in it: it stays, with no DDL; spares if more releases come
                    await self._kick()
                return
            name = self._name(slot.user)
            await self._make_database(await self._ddl(slot), name)
            self.retired.append(slot.database)
        self.dropping += 1
        slot.database = slot.client.database = name
        await self._kick()

    def _short(self, user: str | None) -> bool:
        """Whether ``user``'s spares, with its released databases not yet looked at, are too few."""
        wanted = max(self.SPARES, self.live) if user is None else self.SLOT_SPARES
        in_flight = sum(1 for _, owner in self.returned + self._looking if owner == user)
        return len(self.spare_sets.get(user, ())) + in_flight < wanted

    async def _reclaim(self, own: str | None = None) -> bool:
        """Looks at every returned database, and ``own`` (a releasing slot's), in one SELECT: an
        untouched returned one is a spare again, the rest retire. Returns whether ``own`` is untouched."""
        returned, self.returned = self.returned, []
        names = [name for name, _ in returned] + ([own] if own is not None else [])
        if not names:
            return False
        self._looking.extend(returned)
        try:
            closed = self.runtime.closed and own is None
            reuse = set() if closed else await self._looks.untouched(await self._admin_client(), names)
        except Exception as exc:  # looked at again as retired databases: dropped, or retried
            log.warning("isolated_env: checking ClickHouse databases %s failed: %r", returned, exc)
            self.retired.extend(name for name, _ in returned)
            if own is not None:
                raise
            return False
        except BaseException:  # cancelled: still to be looked at
            self.returned.extend(returned)
            raise
        finally:
            for item in returned:
                self._looking.remove(item)
        for name, user in returned:
            spares = self.spare_sets.get(user)
            if name in reuse and spares is not None:
                spares.append(name)
                self.dropping -= 1
            else:
                self.retired.append(name)
        return own is not None and own in reuse

    async def _kick(self) -> None:
        if not self._working:
            self._working = True
            await self.runtime.spawn(self._work, name="isolated-env clickhouse drops and spares")

    async def _work(self) -> None:
        """Off the test's path: looks at returned databases, makes spares (every user short of them
        gets one before any gets two), then drops retired databases. A DROP that
        fails is logged and retried on the next round (or at close): one failure must not stop the
        drops that follow."""
        try:
            admin = await self._admin_client()
            while not self.runtime.closed:
                if self.returned:
                    await self._reclaim()
                    continue
                # A released database still to be looked at counts: it may come back as a spare, so
                # a slot's databases stay its own, its spares and those being dropped.
                short = [user for user in self.spare_sets if self._short(user)]
                if short:
                    await self._make_spare(admin, min(short, key=lambda user: len(self.spare_sets[user])))
                    continue
                failed: list[str] = []
                while self.retired:
                    name = self.retired.pop()
                    try:
                        await self._drop_database(admin, name)
                    except Exception as exc:
                        log.warning("isolated_env: dropping ClickHouse database %s failed (retried later): %r",
                                    name, exc)
                        failed.append(name)
                        continue
                    self.dropping -= 1
                self.retired.extend(failed)
                return
        finally:
            self._working = False

    async def _make_spare(self, admin: Any, user: str | None) -> None:
        name = self._name(user)
        await self._make_database(admin, name)
        spares = self.spare_sets.get(user)
        if spares is None:  # its slot went away meanwhile: dropped with the retired ones
            self.retired.append(name)
            self.dropping += 1
        else:
            spares.append(name)

    async def settle(self) -> None:
        """Wait for the background work: every released database dropped or a spare again, the
        spares made (raises the last failure when a drop keeps failing)."""
        for _ in range(3):
            if self._working:
                await self.runtime.settle()
            if not self.dropping:
                return
            await self._kick()
            await self.runtime.settle()
        if self.dropping:
            raise ConfigError(
                f"{self.dropping} released ClickHouse database(s) could not be dropped: "
                + "; ".join(repr(e) for e in self.runtime.errors[-3:])
            )

    async def keep(self, slot: _Slot) -> Kept:
        """A failed test's database stays, labelled kept, until ``isolated-env prune --kept``."""
        if self.mode == "database":
            let_go(slot.database)  # before the relabelling: the heartbeat must not write a lease back
            kept = await lease_comment(slot.client, self.server, kept=True)
            await (await self._ddl(slot)).command(
                f"ALTER DATABASE {_ident(slot.database)} MODIFY COMMENT {_literal(kept)}",
                use_database=False,
            )
            self._forget(slot)
            where = f"database {slot.database} at {redact_url(self.server.url)}"
        else:
            let_go(slot.lease)
            await slot.client.command(
                f"ALTER TABLE {_ident(slot.database)}.{_ident(slot.marker)} "
                f"MODIFY COMMENT {_literal(await lease_comment(slot.client, self.server, kept=True))}"
            )
            where = f"tables {slot.database}.{slot.prefix}* at {redact_url(self.server.url)}"
        await slot.client.close()
        return Kept("clickhouse", where, f"query it with database={slot.database}")

    async def aclose(self) -> None:
        """At the event loop's end: drop the retired and spare databases."""
        leftovers = self.retired + [name for name, _ in self.returned] + self.spares
        self.retired, self.returned = [], []
        self.spare_sets = {} if self.guarded else {None: []}
        if not leftovers:
            if self._admin is not None:
                await self._admin.close()
            return
        admin = self._admin or await connect(self.server, self.server.database)
        try:
            for name in leftovers:
                try:
                    await self._drop_database(admin, name)
                except Exception as exc:  # its owner label lets the next start's reaper drop it
                    log.warning("isolated_env: dropping ClickHouse database %s at close failed: %r", name, exc)
        finally:
            await admin.close()

    def _forget(self, slot: _Slot) -> None:
        """A slot that goes away: its spares (a lease user's own) are dropped in the background."""
        if slot.user is not None:
            spares = self.spare_sets.pop(slot.user, [])
            self.retired.extend(spares)
            self.dropping += len(spares)

    async def destroy(self, slot: _Slot) -> None:
        try:
            self._forget(slot)
            if slot.user is None and self.mode == "database":
                self.live -= 1
            if self.mode == "database":
                await self._drop_database(await self._ddl(slot), slot.database)
            else:
                let_go(slot.lease)
                await _drop_prefixed(slot.client, slot.database, slot.prefix, keep=None)
        finally:
            await slot.client.close()
        if (self.retired or self.returned) and not self.runtime.closed:
            await self._kick()


