"""Every database of ours says who owns it, and this process remembers what it owns.

``CREATE DATABASE`` is followed by a comment holding the owner (:mod:`isolated_env._ownership`: machine,
PID namespace, pid, start time, run) and what the database is for, so a reaper can tell a dead
owner's database from a live one's (:mod:`.janitor`); on an external server the comment also holds
the end of the database's lease, renewed by :mod:`.leases` while this process owns it.
What this process created and has not dropped yet is dropped at exit, also when
the server outlives the process (it is shared with other processes).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from typing import Any

from ..._drivers import asyncpg as driver
from ..._errors import ServiceUnavailable
from ..._leases import lease_label
from ..._servers.postgres import PostgresServer
from .leases import expiry, hold, let_go
from .sql import quote_ident, quote_literal

__all__ = [
    "CLONE_PREFIX", "create_database", "disown", "disown_server", "drop", "drop_database", "no_createdb", "own",
    "server_key",
]

log = logging.getLogger("isolated_env")

CLONE_PREFIX = "ie_db_"  # the names of database mode's private databases (and of their roles)


def server_key(server: PostgresServer) -> str:
    """One server as seen by one role: the key of everything cached per server."""
    return f"{server.host}:{server.port}:{server.user}"


async def create_database(
    admin: Any, server: PostgresServer, name: str, template: str, *, grant: str | None = None, then: str = "",
    **extra: Any,
) -> None:
    """CREATE DATABASE … TEMPLATE …, labelled with its owner so a reaper can tell if it is orphaned;
    ``grant`` is a role given ``CREATE`` on it (the test role, which owns no database); ``then`` is
    more SQL sent in the labelling round trip."""
    strategy = " STRATEGY FILE_COPY" if server.major >= 15 else ""
    await admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}{strategy}")
    with _owned_lock:
        leased = server.source == "external" and name in _owned
    label = lease_label(extra, await expiry(admin, server) if leased else None)
    also = f"; GRANT CREATE ON DATABASE {quote_ident(name)} TO {quote_ident(grant)}" if grant else ""
    also += f"; {then}" if then else ""
    await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(label)}{also}")
    if leased:
        hold(server, name)


async def drop_database(admin: Any, name: str) -> None:
    """Drop a database (not a template), ending its sessions, and its own login role if it has one
    (a private database's, :func:`.roles.lease_server`)."""
    let_go(name)  # first: a heartbeat must not renew what is going
    await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    if name.startswith(CLONE_PREFIX):
        await admin.execute(f"DROP ROLE IF EXISTS {quote_ident(name)}")


async def drop(admin: Any, name: str) -> None:
    """Drop a database of ours, template or not, ending its sessions; also an invalid one.

    An interrupted ``DROP DATABASE`` leaves an invalid database (``datconnlimit = -2``, PostgreSQL
    15.4 and later) that only ``DROP`` accepts: ``ALTER DATABASE`` on it is a FATAL error that ends
    the session, so it is never sent one. An invalid database still marked as a template (which
    ``DROP`` refuses) is unmarked in the catalog, which only a superuser may do.
    """
    ident = quote_ident(name)
    row = await admin.fetchrow(
        "SELECT datistemplate, datconnlimit = -2 AS invalid FROM pg_database WHERE datname = $1", name
    )
    if row is None:
        return
    if row["datistemplate"] and row["invalid"]:
        await admin.execute("UPDATE pg_database SET datistemplate = false WHERE datname = $1", name)
    elif row["datistemplate"]:
        try:
            await admin.execute(f"ALTER DATABASE {ident} WITH IS_TEMPLATE false")
        except driver.module().InvalidCatalogNameError:
            return  # dropped meanwhile
    await admin.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")


def no_createdb(server: PostgresServer, exc: BaseException) -> ServiceUnavailable:
    """The error for a role that may not create databases."""
    return ServiceUnavailable(
        "PostgreSQL",
        f"user {server.user!r} may not create databases on {server.host}:{server.port} ({exc})",
        fix=f"ALTER ROLE {server.user} CREATEDB, or use isolated_postgres(mode='transaction')",
    )


# ---------------------------------------------------------------------------------------------
# What this process owns, across event loops: dropped at exit, reaped by others if we are killed.

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
    """Forget a database: it was dropped, or it is kept for a failed test."""
    with _owned_lock:
        _owned.pop(name, None)
    let_go(name)


def disown_server(server: PostgresServer) -> None:
    """Forget every database on ``server``: it died, and its databases with it."""
    key = server_key(server)
    with _owned_lock:
        names = [n for n, s in _owned.items() if server_key(s) == key]
        for name in names:
            del _owned[name]
    for name in names:
        let_go(name)


def _drop_owned_blocking() -> None:
    """At exit: drop what is left (the server may outlive us, shared with other processes)."""
    with _owned_lock:
        owned = dict(_owned)
    if not owned:
        return

    async def drop_all() -> None:
        by_server: dict[str, tuple[PostgresServer, list[str]]] = {}
        for name, server in owned.items():
            by_server.setdefault(server_key(server), (server, []))[1].append(name)
        for server, names in by_server.values():
            admin = await driver.connect(server)
            try:
                for name in names:
                    try:
                        await drop_database(admin, name)
                    except Exception as exc:  # left for the next start's reaper (we are dead by then)
                        log.debug("isolated_env: could not drop %s at exit: %r", name, exc)
                    else:
                        disown(name)
            finally:
                await driver.close(admin)

    try:
        asyncio.run(drop_all())
    except Exception as exc:  # the server went first (an embedded one stops with the run): the reaper has it
        log.debug("isolated_env: dropping this process's databases at exit failed: %r", exc)
