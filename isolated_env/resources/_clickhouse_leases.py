"""Server-side leases of the ClickHouse databases a process made on an external server.

A database's comment is its owner label (:mod:`isolated_env._ownership`) plus ``exp``, the end of its
lease in the server's clock, renewed by the heartbeat (:class:`isolated_env._leases.Keeper`) while
the process holds it. A reaper anywhere drops a database only when its owner is provably dead (in
the reaper's own machine and PID namespace) or its lease has ended.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import IsolationBroken
from .._leases import Keeper, expired, lease_label
from .._ownership import alive, lease_ttl, me, parse

if TYPE_CHECKING:
    from .._servers.clickhouse import ClickHouseServer

__all__ = [
    "Looks", "check", "comment", "drop_prefixed", "hold", "keeper", "let_go", "reap", "reapable", "server_now",
    "untouched",
]

log = logging.getLogger("isolated_env")

NOW = "toFloat64(toUnixTimestamp64Milli(now64(3))) / 1000"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


async def server_now(client: Any) -> float:
    return float(await client.command(f"SELECT {NOW}", use_database=False))


async def renew(client: Any, names: list[str]) -> tuple[dict[str, str], float]:
    """Push the leases of ``names`` one TTL ahead; returns those found lost, with why, and the
    server's time."""
    result = await client.query(
        f"SELECT name, comment, {NOW} FROM system.databases WHERE has({{names:Array(String)}}, name)",
        parameters={"names": names},
    )
    rows = {name: (text, now) for name, text, now in result.result_rows}
    now = next(iter(rows.values()))[1] if rows else await server_now(client)
    lost: dict[str, str] = {}
    mine = me()
    for name in names:
        parsed = parse(rows[name][0]) if name in rows else None
        if name not in rows:
            lost[name] = "the database was dropped by someone else"
        elif parsed is None or parsed[0] != mine:
            lost[name] = "its comment now names another owner"
        elif expired(parsed[1], now):
            lost[name] = "it ended before this renewal"
        else:
            label = mine.label(**{**parsed[1], "exp": round(now + lease_ttl(), 1)})
            try:
                await client.command(f"ALTER DATABASE {_ident(name)} MODIFY COMMENT {_literal(label)}",
                                     use_database=False)
            except Exception:
                # Dropped between the look and the renewal (its owner let it go): lost if still held.
                if await client.command(f"EXISTS DATABASE {_ident(name)}", use_database=False) not in (0, "0"):
                    raise
                lost[name] = "the database was dropped by someone else"
    return lost, float(now)


async def _connect(server: ClickHouseServer) -> Any:
    from .._drivers import clickhouse as ch_driver

    return await ch_driver.connect(**server.client_kwargs(server.database), autogenerate_session_id=False)


async def _close(client: Any) -> None:
    await client.close()


_keeper = Keeper("ClickHouse database", lambda server: f"{server.url}#{server.username}", _connect, _close, renew,
                 lambda server: (server.host, server.port))


def keeper() -> Keeper:
    return _keeper


async def comment(client: Any, server: ClickHouseServer, *, kept: bool = False, leased: bool = True) -> str:
    """The label of a database made now: with a lease on an external server (unless kept, or not
    ``leased``: a prefix mode marker table, judged by its owner's liveness alone)."""
    if server.source != "external" or kept or not leased:
        return lease_label({"kept": True} if kept else {}, None)

    async def now() -> float:
        return await server_now(client)

    return lease_label({}, await _keeper.expiry(server, now))


def hold(server: ClickHouseServer, name: str) -> None:
    if server.source == "external":
        _keeper.hold(server, name)


def let_go(name: str) -> None:
    _keeper.let_go(name)


def check(name: str) -> None:
    """Raise ``IsolationBroken`` when the lease of database ``name`` was lost."""
    why = _keeper.lost(name)
    if why is not None:
        raise IsolationBroken(why)


def reapable(text: str, now: float, *, kept: bool = False) -> bool:
    """Whether a database labelled ``text`` may be dropped: one of ours whose owner is provably dead,
    or whose lease has ended; a kept one only when ``kept`` asks for those too."""
    parsed = parse(text)
    if parsed is None:
        return False
    if parsed[1].get("kept"):
        return kept
    state = alive(parsed[0])
    return state is False or (state is None and expired(parsed[1], now))


async def untouched(admin: Any, databases: list[str]) -> set[str]:
    """Those of ``databases`` that are as they were made: there, no table, view or dictionary in
    them, their owner label unchanged (one SELECT for all, where a swap costs a DROP and a CREATE)."""
    rows = (
        await admin.query(
            "SELECT name, comment, name IN (SELECT database FROM system.tables WHERE has({dbs:Array(String)}, "
            "database)) FROM system.databases WHERE has({dbs:Array(String)}, name)",
            parameters={"dbs": databases},
        )
    ).result_rows
    found = set()
    mine = me()
    for name, text, used in rows:
        label = parse(text)  # the owner, and no other field but its lease's end
        if not used and label is not None and label[0] == mine and set(label[1]) <= {"exp"}:
            found.add(name)
    return found


async def reap(admin: Any, server: ClickHouseServer, mode: str, *, kept: bool = False) -> list[str]:
    """Drop what isolated_env created for owners that provably died or whose lease ended; returns
    what was dropped."""
    dropped: list[str] = []
    now = await server_now(admin)
    if mode == "database":
        rows = (
            await admin.query("SELECT name, comment FROM system.databases WHERE startsWith(name, 'ie_')")
        ).result_rows
        for name, comment in rows:
            if reapable(comment, now, kept=kept):
                await admin.command(f"DROP DATABASE IF EXISTS {_ident(name)} SYNC", use_database=False)
                dropped.append(name)
        if dropped:
            log.info("isolated_env: dropped ClickHouse databases %s: their owner died, or they were kept and "
                     "pruned", ", ".join(dropped))
        return dropped
    rows = (
        await admin.query(
            "SELECT name, comment FROM system.tables WHERE database = {db:String} "
            "AND startsWith(name, 'ie_') AND endsWith(name, '__owner')",
            parameters={"db": server.database},
        )
    ).result_rows
    for marker, comment in rows:
        if reapable(comment, now, kept=kept):
            prefix = marker[: -len("_owner")]
            dropped += await drop_prefixed(admin, server.database, prefix, keep=None)
    return dropped


async def drop_prefixed(client: Any, database: str, prefix: str, keep: str | None) -> list[str]:
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


class _Ask:
    __slots__ = ("found", "names")

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.found: set[str] | None = None


class Looks:
    """:func:`untouched` shared by everyone asking at once: one SELECT runs at a time, and those who
    ask while it runs are answered together by the next one. Twenty releases at once wait for two
    round trips at most, not for twenty in a row (nor send twenty to a server busy with them)."""

    def __init__(self) -> None:
        self._queued: list[_Ask] = []
        self._busy = False
        self._done = anyio.Event()

    async def settled(self) -> None:
        """Wait for the look in flight, if any (its askers have their answers when this returns)."""
        if self._busy:
            await self._done.wait()

    async def untouched(self, admin: Any, names: list[str]) -> set[str]:
        ask = _Ask(names)
        self._queued.append(ask)
        while ask.found is None:
            if self._busy:
                await self._done.wait()
                continue
            self._busy = True
            batch, self._queued = self._queued, []
            try:
                found = await untouched(admin, sorted({name for each in batch for name in each.names}))
            except BaseException:
                for each in batch:  # the others look again, or count theirs as used: never as untouched
                    if each is not ask:
                        each.found = None
                        self._queued.append(each)
                raise
            finally:
                self._busy = False
                done, self._done = self._done, anyio.Event()
                done.set()
            for each in batch:
                each.found = found.intersection(each.names)
        return ask.found
