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

from typing import TYPE_CHECKING, Any

from ..._errors import IsolationBroken
from ..._leases import Keeper, expired, lease_label
from ..._ownership import lease_ttl, me, parse
from .sql import quote_ident, quote_literal

if TYPE_CHECKING:
    from ..._servers.postgres import PostgresServer

__all__ = ["check", "expired", "expiry", "hold", "keeper", "lease_label", "let_go", "lost", "renew"]



async def renew(conn: Any, names: list[str]) -> tuple[dict[str, str], float]:
    """Push the lease of ``names`` (ours) one TTL ahead, in the server's clock; returns those found
    lost, with why (dropped, relabelled by someone else, or ended before this renewal), and the
    server's time."""
    rows = await conn.fetch(
        "SELECT d.datname, shobj_description(d.oid, 'pg_database') AS label, "
        "extract(epoch FROM clock_timestamp())::float8 AS now FROM pg_database d WHERE d.datname = ANY($1::text[])",
        names,
    )
    now = rows[0]["now"] if rows else await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    found = {row["datname"]: row["label"] for row in rows}
    lost: dict[str, str] = {}
    statements: dict[str, str] = {}
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
            fields = {**parsed[1], "exp": round(now + lease_ttl(strict=False), 1)}
            statements[name] = f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(mine.label(**fields))}"
    if statements:
        try:
            await conn.execute(";".join(statements.values()))
        except Exception as exc:
            # One database dropped between the look and the renewal (its owner let it go): the
            # others are renewed one by one; a database that is gone is lost, if still held.
            if type(exc).__name__ != "InvalidCatalogNameError":
                raise
            for name, statement in statements.items():
                try:
                    await conn.execute(statement)
                except Exception as one:
                    if type(one).__name__ != "InvalidCatalogNameError":
                        raise
                    lost[name] = "the database was dropped by someone else"
    return lost, now


async def _connect(server: PostgresServer) -> Any:
    from ..._drivers import asyncpg as driver

    return await driver.connect(server)


async def _close(conn: Any) -> None:
    from ..._drivers import asyncpg as driver

    await driver.close(conn)


def _where(server: PostgresServer) -> str | tuple[str, int]:
    return f"{server.host}/.s.PGSQL.{server.port}" if server.host.startswith("/") else (server.host, server.port)


_keeper = Keeper(
    "PostgreSQL database", lambda server: f"{server.host}:{server.port}:{server.user}", _connect, _close, renew, _where
)


def keeper() -> Keeper:
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
    async def now() -> float:
        return float(await admin.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))

    return await _keeper.expiry(server, now)
