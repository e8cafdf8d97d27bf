"""What the reaper (at a process's first use of a server) and ``isolated-env prune`` remove from a
ClickHouse server: the ``ie_*`` databases, and in prefix mode the tables of a prefix whose marker
table ``<prefix>_owner`` says its owner provably died or its lease ended (in the server's clock).

``scope`` narrows it to one run or this machine's runs (``prune --run ID``, ``prune --mine``);
``dry_run`` lists what would go and drops nothing. A live lease is never touched, whatever the scope.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from .._ownership import Scope
from ._clickhouse_leases import reapable, server_now

if TYPE_CHECKING:
    from .._servers.clickhouse import ClickHouseServer

__all__ = ["drop_prefixed", "reap"]

log = logging.getLogger("isolated_env")

_ALL = Scope()


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


async def reap(
    admin: Any, server: ClickHouseServer, mode: Literal["database", "prefix"], *, kept: bool = False,
    scope: Scope = _ALL, dry_run: bool = False,
) -> list[str]:
    """Drop what isolated_env created for owners that provably died or whose lease ended (with
    ``kept``, also what was kept for failed tests); returns what was dropped (or would be)."""
    now = await server_now(admin)
    if mode == "database":
        rows = (
            await admin.query("SELECT name, comment FROM system.databases WHERE startsWith(name, 'ie_')")
        ).result_rows
        dropped = [name for name, comment in rows if reapable(comment, now, kept=kept, scope=scope)]
        if dry_run:
            return dropped
        for name in dropped:
            await admin.command(f"DROP DATABASE IF EXISTS {_ident(name)} SYNC", use_database=False)
        if dropped:
            log.info("isolated_env: dropped ClickHouse databases %s: their owner died or their lease ended, "
                     "or they were kept and pruned", ", ".join(dropped))
        return dropped
    rows = (
        await admin.query(
            "SELECT name, comment FROM system.tables WHERE database = {db:String} "
            "AND startsWith(name, 'ie_') AND endsWith(name, '__owner')",
            parameters={"db": server.database},
        )
    ).result_rows
    found: list[str] = []
    for marker, comment in rows:
        if reapable(comment, now, kept=kept, scope=scope):
            prefix = marker[: -len("_owner")]
            found += await drop_prefixed(admin, server.database, prefix, keep=None, dry_run=dry_run)
    return found


async def drop_prefixed(
    client: Any, database: str, prefix: str, keep: str | None, *, dry_run: bool = False
) -> list[str]:
    """Drop every table (and dictionary) of ``database`` named ``prefix…`` but ``keep``."""
    rows = (
        await client.query(
            "SELECT name, engine FROM system.tables "
            "WHERE database = {db:String} AND startsWith(name, {p:String})",
            parameters={"db": database, "p": prefix},
        )
    ).result_rows
    dropped = []
    for name, engine in sorted(rows, key=lambda row: row[0] == prefix + "_owner"):  # the marker last
        if name == keep:
            continue
        if not dry_run:
            kind = "DICTIONARY" if engine == "Dictionary" else "TABLE"
            await client.command(f"DROP {kind} IF EXISTS {_ident(database)}.{_ident(name)} SYNC")
        dropped.append(f"{database}.{name}")
    return dropped
