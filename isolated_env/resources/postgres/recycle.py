"""Recycling a released private database back to its template's state, when that is provably exact.

A clone costs a ``CREATE DATABASE … TEMPLATE`` (a checkpoint and a file copy); most tests write a
few rows. A released database is handed out again only when everything it could have changed is
known and put back, under a new name and password (nothing of the test it served reaches it);
anything else is dropped, as before.

What is known, for a database whose tests log in as its own role (the embedded server's rails,
:mod:`.roles`; superuser tests and external servers never recycle):

- **Rows.** PostgreSQL counts the rows every session inserts, updates and deletes per table, and a
  session's counts are flushed before it leaves ``pg_stat_activity`` (the flush is a
  ``before_shmem_exit`` hook, the activity entry an ``on_shmem_exit`` one). So once no session is
  left on the database, a table whose counts moved since the database was cloned or last recycled
  was written to. Counts are per database: a new database starts at zero.
- **Schema, grants, comments, extensions, large objects, planner statistics.** All of it lives in
  the database's own catalogs, which are tables counted the same way: any write to one (DDL, a
  temporary table, ``GRANT``, ``CREATE EXTENSION``, ``lo_create``, ``ANALYZE``), and any vacuum or
  analyze of any table, makes the database not recyclable.
- **Shared state.** Settings of its role, the test role or the database (``pg_db_role_setting``),
  its login role's password, a prepared transaction, a server restart or a statistics reset
  (counts could have been lost): not recyclable.
- **Sequences.** ``nextval`` is not counted: every sequence's ``(last_value, is_called)`` is
  compared with the template's.

A recyclable database is put back in one transaction: from a table only written to by inserts,
the rows no transaction of the template wrote are deleted (``xmin``); any other written table is
emptied (``DELETE``, which writes no catalog) and the template's rows copied back in their order
(``COPY … binary``, taken once per template from a fresh clone); ``setval`` puts sequences back.
The next test's own login does it for the test role's tables without triggers, rules or row
security, else the superuser with triggers and rules off (``session_replication_role = replica``);
the counts after it are kept to compare with next time. Tables with ``ENABLE ALWAYS`` triggers or
rules, templates with over :data:`MAX_TEMPLATE_BYTES` of rows, are never restored.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..._drivers import asyncpg as driver
from ..._servers._pg_cluster import scram_verifier
from ..._servers.postgres import PostgresServer
from ._recycle_sql import SEQUENCES_SQL, SHARED_SQL, STATS_SQL, XACT_SQL
from .labels import disown, server_key
from .roles import TEST_ROLE
from .sql import quote_ident, quote_literal

__all__ = ["MAX_TEMPLATE_BYTES", "MAX_USES", "Recycler", "enabled", "recycler", "reuse"]

log = logging.getLogger("isolated_env")

MAX_TEMPLATE_BYTES = 8 << 20  # template rows kept in memory for restores; above it, clone as before
MAX_USES = 200  # then the database is dropped anyway (dead rows and index entries accumulate)
_SESSION_WAIT_S = 0.5  # how long the released database's sessions may take to end

_NONE = (0, 0, 0, 0)
_Restore = tuple[int, "_Table", "list[str] | None"]  # a table, and the xmins of its rows to keep (None: all go)


def _shared(row: Any) -> tuple[str, ...]:
    return (row["password"], row["role_settings"], row["started"], row["reset"])


def enabled() -> bool:
    """Whether released databases may be recycled (``ISOLATED_ENV_POSTGRES_RECYCLE=0`` says no)."""
    return os.environ.get("ISOLATED_ENV_POSTGRES_RECYCLE", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class _Table:
    schema: str
    name: str
    rows: bytes  # COPY … (FORMAT binary) of the template's rows
    xmins: list[str]  # the transactions that wrote them in the template (a restore writes others)
    plain: bool  # the test role's, with no trigger, rule or row security: its own login restores it


@dataclasses.dataclass
class _Snapshot:
    tables: dict[int, _Table]  # restorable tables by oid (same oids in every clone)
    sequences: dict[int, int | None]  # pg_sequence_last_value: None while never called
    template: int  # the template database's oid: a template dropped and built again is another
    owned: frozenset[int]  # the sequences the test role owns (may set back itself)


@dataclasses.dataclass
class _Known:
    """What one database was last left as: counts, the shared state it was made with, its uses."""

    shared: tuple[str, ...]
    counts: dict[int, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    uses: int = 0
    xmins: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # of its restored tables' rows


class Recycler:
    """Recycling for the clones of one template on one server (across event loops)."""

    def __init__(self, server: PostgresServer, template_name: str) -> None:
        self.server = server  # a superuser: reads other sessions, bypasses RLS, sets replication role
        self.template_name = template_name
        self.snapshot: _Snapshot | None = None
        self.disabled = False  # the template cannot be recycled (too big, counts off)
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}
        self.recycled = self.restored = self.refused = 0
        self.ms: collections.deque[float] = collections.deque(maxlen=10_000)  # each recycle, end to end

    async def created(self, admin: Any, name: str, role: str) -> None:
        """Record the shared state of clone ``name`` (and its login ``role``), just made."""
        row = await admin.fetchrow(SHARED_SQL, name, role, TEST_ROLE, self.template_name)
        if row["password"] is None:  # no such role
            return
        if self.snapshot is not None and self.snapshot.template != row["template"]:
            with self._lock:  # clones of a template since dropped (and built again): not recycled
                self._known.clear()
            self.snapshot = None
        if self.snapshot is None and not self.disabled:  # the first: the template's rows, to restore
            try:
                await self.take_snapshot(name, row["template"])
            except Exception as exc:  # not recycled, then: dropped and cloned as before
                self.disabled = True
                log.warning("isolated_env: clones of %s cannot be recycled: %r", self.template_name, exc)
        with self._lock:
            self._known[name] = _Known(_shared(row))

    def forget(self, name: str) -> None:
        with self._lock:
            self._known.pop(name, None)

    async def take_snapshot(self, name: str, template: int) -> None:
        """The template's rows and sequences, from ``name``: a clone of it nobody has used yet."""
        conn = await driver.connect(self.server, name)
        try:
            if await conn.fetchval("SELECT current_setting('track_counts')") != "on":
                self.disabled = True
                return
            tables: dict[int, _Table] = {}
            size = 0
            for row in await conn.fetch(
                "SELECT c.oid, n.nspname, c.relname, EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid "
                "AND t.tgenabled = 'A') OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND "
                "r.ev_enabled = 'A') AS always, c.relowner = $1::regrole AND NOT c.relrowsecurity AND NOT EXISTS "
                "(SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid) AND NOT EXISTS (SELECT 1 FROM pg_rewrite r "
                "WHERE r.ev_class = c.oid) AS plain FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'", TEST_ROLE
            ):
                if row["always"]:
                    continue  # restoring it would fire its triggers or rules: never restored
                out = io.BytesIO()
                await conn.copy_from_table(row["relname"], schema_name=row["nspname"], output=out, format="binary")
                size += out.tell()
                if size > MAX_TEMPLATE_BYTES:
                    self.disabled = True
                    return
                ident = f"{quote_ident(row['nspname'])}.{quote_ident(row['relname'])}"
                xmins = await conn.fetchval(f"SELECT coalesce(array_agg(DISTINCT xmin::text), '{{}}') "
                                            f"FROM ONLY {ident}")
                tables[row["oid"]] = _Table(row["nspname"], row["relname"], out.getvalue(), xmins, row["plain"])
            sequences = {row["oid"]: row["value"] for row in await conn.fetch(SEQUENCES_SQL)}
            owned = await conn.fetchval("SELECT coalesce(array_agg(oid), '{}') FROM pg_class WHERE relkind = 'S' "
                                        "AND relowner = $1::regrole", TEST_ROLE)
            self.snapshot = _Snapshot(tables, sequences, template, frozenset(owned))
        finally:
            await driver.close(conn)

    async def recycle(self, admin: Any, name: str, role: str, new: PostgresServer) -> Any:
        """Put ``name`` back to the template's state, renamed to ``new.user`` with ``new`` as its
        login (so nothing of the test it served can reach it): returns a session of ``new`` on it,
        to park for the next test; or None when that cannot be proven exact (the caller drops the
        database under either name). ``admin`` is a superuser connection."""
        with self._lock:
            known = self._known.pop(name, None)
        snapshot = self.snapshot
        if known is None or snapshot is None or self.disabled or known.uses >= MAX_USES:
            self._refuse(name, "no record" if known is None else "not recyclable")
            return None
        shared = await self._ended(admin, name, role)
        if shared is None:
            self._refuse(name, "a session is still open")
            return None
        if shared["settings"]:
            self._refuse(name, "it has settings or a prepared transaction")
            return None
        if _shared(shared) != known.shared:
            self._refuse(name, "its role, the server or its statistics changed")
            return None
        # Renamed first (no session may be open for that): the counts are read by the new login.
        renamed = quote_ident(new.user)
        sql = (f"ALTER DATABASE {quote_ident(name)} RENAME TO {renamed}; "
               f"ALTER ROLE {quote_ident(role)} RENAME TO {renamed}")
        password = shared["password"]
        if new.password:
            password = scram_verifier(new.password)
            sql += f"; ALTER ROLE {renamed} PASSWORD {quote_literal(password)}"
        await admin.execute(sql)
        conn = await driver.connect(new, new.user, reuse=True)
        try:
            xmins = dict(known.xmins)
            counts = await self._check(conn, known, snapshot, new.user, xmins)
        except BaseException:
            conn.terminate()
            raise
        if counts is None:
            conn.terminate()
            return None
        with self._lock:
            self._known[new.user] = _Known((password, *_shared(shared)[1:]), counts, known.uses + 1, xmins)
        self.recycled += 1
        return conn

    async def _check(
        self, conn: Any, known: _Known, snapshot: _Snapshot, name: str, xmins: dict[int, list[str]],
    ) -> dict[int, tuple[int, ...]] | None:
        """What the released test changed, put back; the counts then (None: not recyclable)."""
        rows = await conn.fetch(STATS_SQL)
        counts = {row["oid"]: tuple(row)[3:7] for row in rows if row["relkind"] != "S"}
        kinds = {row["oid"]: (row["system"], row["relkind"]) for row in rows}
        restore = []
        for oid in counts.keys() | known.counts.keys():
            if counts.get(oid) == known.counts.get(oid):
                continue
            system, kind = kinds.get(oid, (True, "?"))
            if kind == "t":
                continue  # a TOAST table: its rows go with its table's
            if system or oid not in snapshot.tables or oid not in counts or \
                    counts[oid][3] != known.counts.get(oid, _NONE)[3]:
                self._refuse(name, "its schema, catalogs or statistics changed")
                return None
            was = known.counts.get(oid, _NONE)
            added_only = counts[oid][1] == was[1] and counts[oid][2] == was[2]  # no update, no delete
            table = snapshot.tables[oid]
            restore.append((oid, table, xmins.get(oid, table.xmins) if added_only else None))
        sequences = {row["oid"]: row["value"] for row in rows if row["relkind"] == "S"}
        if sequences.keys() != snapshot.sequences.keys():
            self._refuse(name, "its sequences changed")
            return None
        moved = [oid for oid, value in sequences.items() if value != snapshot.sequences[oid]]
        if not restore and not moved:
            return counts
        if all(table.plain for _, table, _ in restore) and snapshot.owned.issuperset(moved):
            after = await self._restore(conn, name, counts, restore, moved, snapshot, xmins, superuser=False)
        else:
            admin = await driver.connect(self.server, name)  # a superuser: triggers off, RLS bypassed
            try:
                after = await self._restore(admin, name, counts, restore, moved, snapshot, xmins, superuser=True)
            finally:
                await driver.close(admin)
        if after is None:
            self._refuse(name, "a session opened while it was restored")
            return None
        self.restored += 1
        return after

    async def _restore(
        self, conn: Any, name: str, counts: dict[int, tuple[int, ...]], restore: list[_Restore], moved: list[int],
        snapshot: _Snapshot, xmins: dict[int, list[str]], *, superuser: bool,
    ) -> dict[int, tuple[int, ...]] | None:
        """In one transaction: the template's rows back into ``restore``, the ``moved`` sequences
        back; returns the counts the database has once this session's are flushed (None: refused)."""
        try:
            mine = await self._put_back(conn, name, restore, moved, snapshot, xmins, superuser)
        except _Interloper:
            return None
        after = dict(counts)
        for oid, delta in mine.items():
            before = after.get(oid, _NONE)
            after[oid] = (before[0] + delta[0], before[1] + delta[1], before[2] + delta[2], before[3])
        return after

    async def _put_back(
        self, conn: Any, name: str, restore: list[_Restore], moved: list[int], snapshot: _Snapshot,
        xmins: dict[int, list[str]], superuser: bool,
    ) -> dict[int, tuple[int, ...]]:
        xid: list[str] | None = None
        async with conn.transaction():
            if superuser:
                await conn.execute("SET LOCAL session_replication_role = replica")
            for oid, table, kept in restore:
                ident = f"{quote_ident(table.schema)}.{quote_ident(table.name)}"
                if kept is not None:  # the template's rows are all there, in place: drop the others
                    await conn.execute(f"DELETE FROM ONLY {ident} WHERE NOT xmin::text = ANY($1::text[])", kept)
                    continue
                if xid is None:  # this transaction writes the rows copied back
                    xid = [str(int(await conn.fetchval("SELECT pg_current_xact_id()::text")) % 2**32)]
                xmins[oid] = xid
                await conn.execute(f"DELETE FROM ONLY {ident}")
                if len(table.rows) > 21:  # more than the binary header and trailer: rows
                    await conn.copy_to_table(table.name, schema_name=table.schema, source=io.BytesIO(table.rows),
                                             format="binary")
            for oid in moved:
                value = snapshot.sequences[oid]
                if value is None:
                    await conn.execute("SELECT setval($1::oid::regclass, s.seqstart, false) FROM pg_sequence s "
                                       "WHERE s.seqrelid = $1::oid", oid)
                else:
                    await conn.execute("SELECT setval($1::oid::regclass, $2, true)", oid, value)
            mine = {row["relid"]: tuple(row)[1:] for row in await conn.fetch(XACT_SQL)}
            # Only this session and the one to hand out: nobody wrote meanwhile (a session that
            # came and went would have been flushed into the counts compared next time).
            if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name) != 1 + superuser:
                raise _Interloper
        return mine

    async def _ended(self, admin: Any, name: str, role: str) -> Any:
        """The shared state of ``name`` once no session is left on it (the released test's end on
        their own, briefly); None if some stay."""
        with anyio.move_on_after(_SESSION_WAIT_S):
            while True:
                row = await admin.fetchrow(SHARED_SQL, name, role, TEST_ROLE, self.template_name)
                if not row["sessions"]:
                    return row
                await anyio.sleep(0.001)
        return None

    def _refuse(self, name: str, why: str) -> None:
        """Count and log that ``name`` is not recycled (it is dropped)."""
        self.refused += 1
        log.debug("isolated_env: %s is dropped, not recycled: %s", name, why)


async def reuse(pool: Any, box: list[Any], new_name: Callable[[PostgresServer], str]) -> str | None:
    """The next released clone of ``pool`` (a :class:`.warm.WarmPool`) recycled under a new name, or
    None when none is waiting; those that cannot be recycled are dropped. ``box`` holds the
    worker's superuser connection."""
    while pool.recycles and pool.recycler is not None:
        name = pool.recycles.popleft()
        new = new_name(pool.server)
        pool.recycling.add(name)
        try:
            if box[0] is None or box[0].is_closed():
                box[0] = await driver.connect(pool.server)
            started = time.perf_counter()
            conn = await pool.recycler.recycle(box[0], name, pool.login(name).user, pool.login(new))
            if conn is not None:
                await driver.close(conn, park=True)  # for the test that leases it to take over
                pool.recycler.ms.append((time.perf_counter() - started) * 1000)
                disown(name)
                pool._recycles += 1
                return new
            pool.drops.extend((name, new))  # under either name (the dropper disowns both)
        except BaseException as exc:  # dropped like any other (under either name); the next one is tried
            log.debug("isolated_env: recycling %s failed: %r", name, exc)
            pool.drops.extend((name, new))  # also when cancelled: the closing pool drops them
            if not isinstance(exc, Exception):
                raise
        finally:
            pool.recycling.discard(name)
            pool._dropped.set()  # settle() looks again
        pool._wake_dropper.set()
    return None


class _Interloper(Exception):
    """A session connected to a database while it was being restored."""


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str], Recycler] = {}


def recycler(server: PostgresServer, template_name: str) -> Recycler:
    """The process's recycler of ``template_name``'s clones on ``server``."""
    key = (server_key(server), template_name)
    with _registry_lock:
        made = _registry.get(key)
        if made is None:
            made = _registry[key] = Recycler(server, template_name)
        return made
