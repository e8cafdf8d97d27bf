"""Server-side leases of the databases a process owns on an external PostgreSQL server.

A database's comment is its label (:mod:`isolated_env._ownership`) plus ``exp``: when its lease
ends, in the server's clock. A thread of this process renews the leases of every database it owns
(:func:`.labels.own`) every third of the TTL, in one round trip per server; the reaper of any run,
on any machine, drops only a database whose lease has ended (:mod:`.janitor`).

A lease that could not be renewed in time, or that someone else relabelled or dropped, is lost: the
test that holds the database fails with ``IsolationBroken`` (:func:`check`) instead of going on in
a database another run may reap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..._errors import IsolationBroken
from ..._ownership import lease_ttl, me, parse
from .sql import quote_ident, quote_literal

if TYPE_CHECKING:
    from ..._servers.postgres import PostgresServer

__all__ = ["check", "expired", "expiry", "hold", "keeper", "lease_label", "let_go", "lost", "renew"]

log = logging.getLogger("isolated_env")


def _key(server: PostgresServer) -> str:
    return f"{server.host}:{server.port}:{server.user}"


class _Keeper:
    """Renews this process's PostgreSQL leases from a thread (whatever event loops come and go)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[PostgresServer, set[str]]] = {}
        self._lost: dict[str, str] = {}
        self._offset: dict[str, float] = {}  # server clock minus ours, per server
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.beats = 0  # renewals sent (statistics for the benchmark)

    def hold(self, server: PostgresServer, name: str) -> None:
        with self._lock:
            self._held.setdefault(_key(server), (server, set()))[1].add(name)
            self._lost.pop(name, None)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isolated-env-postgres-leases", daemon=True)
                self._thread.start()
            else:
                self._wake.set()

    def let_go(self, name: str) -> None:
        with self._lock:
            for key, (_server, names) in list(self._held.items()):
                names.discard(name)
                if not names:
                    del self._held[key]
            if not self._held:
                self._wake.set()

    def lost(self, name: str) -> str | None:
        return self._lost.get(name)

    def offset(self, server: PostgresServer) -> float | None:
        return self._offset.get(_key(server))

    def set_offset(self, server: PostgresServer, server_now: float) -> None:
        self._offset[_key(server)] = server_now - time.time()

    def _run(self) -> None:
        from ..._drivers import asyncpg as driver

        loop = asyncio.new_event_loop()
        conns: dict[str, Any] = {}
        last_ok: dict[str, float] = {}
        beat = time.monotonic()
        try:
            while True:
                self._wake.wait(max(0.0, beat + lease_ttl() / 3 - time.monotonic()))
                with self._lock:
                    # Decided under the lock: a hold() racing with our exit either sees no thread
                    # (and starts one) or puts a name in _held that keeps this thread running.
                    self._wake.clear()
                    if not self._held:
                        self._thread = None
                        return
                    if time.monotonic() < beat + lease_ttl() / 3:
                        continue  # woken by hold(): the TTL may have changed, not due yet
                    held = [(key, server, set(names)) for key, (server, names) in self._held.items()]
                beat = time.monotonic()
                for key, server, names in held:
                    loop.run_until_complete(self._renew(key, server, names, conns, last_ok))
        finally:
            for conn in conns.values():
                loop.run_until_complete(driver.close(conn))
            loop.close()

    async def _renew(
        self, key: str, server: PostgresServer, names: set[str], conns: dict[str, Any], last_ok: dict[str, float]
    ) -> None:
        from ..._drivers import asyncpg as driver

        started = time.monotonic()
        try:
            conn = conns.get(key)
            if conn is None or conn.is_closed():
                conn = conns[key] = await asyncio.wait_for(driver.connect(server), 5)
            lost, now = await asyncio.wait_for(renew(conn, sorted(names), self), 5)
        except Exception as exc:  # the server may answer on the next beat; the TTL decides
            conns.pop(key, None)
            log.warning("isolated_env: renewing PostgreSQL leases on %s failed: %r", key, exc)
            if started - last_ok.setdefault(key, started) > lease_ttl():
                for name in names:
                    self._mark(name, f"its heartbeat could not reach the server for over {lease_ttl():g} s ({exc!r})")
            return
        last_ok[key] = started
        self.set_offset(server, now)
        for name, why in lost.items():
            self._mark(name, why)

    def _mark(self, name: str, why: str) -> None:
        with self._lock:
            if not any(name in names for _s, names in self._held.values()):
                return  # let go meanwhile (dropped by its owner)
            self._lost[name] = f"the lease of PostgreSQL database {name} was lost: {why}; another run may reap it"
        self.let_go(name)


async def renew(conn: Any, names: list[str], keeper: _Keeper | None = None) -> tuple[dict[str, str], float]:
    """Push the lease of ``names`` (ours) one TTL ahead, in the server's clock; returns those found
    lost, with why (dropped, relabelled by someone else, or ended before this renewal), and the
    server's time."""
    rows = await conn.fetch(
        "SELECT d.datname, shobj_description(d.oid, 'pg_database') AS label, "
        "extract(epoch FROM clock_timestamp())::float8 AS now FROM pg_database d WHERE d.datname = ANY($1::text[])",
        names,
    )
    now = rows[0]["now"] if rows else await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    if keeper is not None:
        keeper.beats += 1
    found = {row["datname"]: row["label"] for row in rows}
    lost: dict[str, str] = {}
    statements = []
    mine = me()
    for name in names:
        label = found.get(name, "missing")
        parsed = parse(label) if name in found and label else None
        if name not in found:
            lost[name] = "the database was dropped by someone else"
        elif parsed is None or parsed[0] != mine:
            lost[name] = "its label now names another owner"
        elif float(parsed[1].get("exp", now)) < now:
            lost[name] = "it ended before this renewal"
        else:
            fields = {**parsed[1], "exp": round(now + lease_ttl(), 1)}
            statements.append(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(mine.label(**fields))}")
    if statements:
        await conn.execute(";".join(statements))
    return lost, now


_keeper = _Keeper()


def keeper() -> _Keeper:
    return _keeper


def hold(server: PostgresServer, name: str) -> None:
    """Keep the lease of ``name`` (a database this process owns on an external server) alive."""
    if server.source == "external":
        _keeper.hold(server, name)


def let_go(name: str) -> None:
    """Stop renewing ``name`` (dropped, or kept for a failed test)."""
    _keeper.let_go(name)


def lost(name: str) -> str | None:
    """Why the lease of ``name`` was lost, or None."""
    return _keeper.lost(name)


def check(name: str) -> None:
    """Raise ``IsolationBroken`` when the lease of ``name`` was lost."""
    why = _keeper.lost(name)
    if why is not None:
        raise IsolationBroken(why)


async def expiry(admin: Any, server: PostgresServer) -> float:
    """When a lease taken now ends, in the server's clock (the offset is measured once per server)."""
    offset = _keeper.offset(server)
    if offset is None:
        _keeper.set_offset(server, await admin.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
        offset = _keeper.offset(server) or 0.0
    return round(time.time() + offset + lease_ttl(), 1)


def lease_label(extra: dict[str, Any], exp: float | None) -> str:
    """The label of a database: its owner (this process) and ``extra``, with the lease's end."""
    return me().label(**extra, **({"exp": exp} if exp is not None else {}))


def expired(label: dict[str, Any], now: float) -> bool:
    """Whether a parsed label's lease has ended (False for a label with no lease)."""
    exp = label.get("exp")
    return isinstance(exp, (int, float)) and exp < now
