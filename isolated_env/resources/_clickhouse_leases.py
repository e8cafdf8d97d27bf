"""Server-side leases of what a process made on an external ClickHouse server: its databases, and
in prefix mode its table prefixes.

A database's comment (in prefix mode, the comment of the prefix's marker table ``<prefix>_owner``)
is its owner label (:mod:`isolated_env._ownership`) plus ``exp``, the end of its lease in the
server's clock, renewed by the heartbeat (:class:`isolated_env._leases.Keeper`) while the process
holds it. A reaper anywhere drops it only when its owner is provably dead (in the reaper's own
machine and PID namespace) or its lease has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import IsolationBroken
from .._leases import Keeper, expired, lease_label
from .._ownership import Scope, alive, lease_ttl, me, parse

if TYPE_CHECKING:
    from .._servers.clickhouse import ClickHouseServer

__all__ = [
    "Looks", "check", "comment", "hold", "hold_marker", "keeper", "let_go", "lost", "markers", "reapable",
    "server_now", "untouched",
]

NOW = "toFloat64(toUnixTimestamp64Milli(now64(3))) / 1000"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


async def server_now(client: Any) -> float:
    return float(await client.command(f"SELECT {NOW}", use_database=False))


async def renew(client: Any, names: list[str]) -> tuple[dict[str, str], float]:
    """Push the leases of the databases ``names`` one TTL ahead; returns those found lost, with why,
    and the server's time."""
    result = await client.query(
        f"SELECT name, comment, {NOW} FROM system.databases WHERE has({{names:Array(String)}}, name)",
        parameters={"names": names},
    )
    return await _renew(client, names, result.result_rows, "database",
                        lambda name: f"DATABASE {_ident(name)}")


async def renew_markers(client: Any, names: list[str]) -> tuple[dict[str, str], float]:
    """The same for prefix mode's marker tables, named ``<database>.<table>``."""
    result = await client.query(
        f"SELECT concat(database, '.', name), comment, {NOW} FROM system.tables "
        "WHERE has({names:Array(String)}, concat(database, '.', name))",
        parameters={"names": names},
    )
    return await _renew(client, names, result.result_rows, "marker table", _table)


def _table(name: str) -> str:
    database, _, table = name.rpartition(".")
    return f"TABLE {_ident(database)}.{_ident(table)}"


async def _renew(
    client: Any, names: list[str], found: list[Any], what: str, target: Callable[[str], str]
) -> tuple[dict[str, str], float]:
    rows = {name: (text, now) for name, text, now in found}
    now = next(iter(rows.values()))[1] if rows else await server_now(client)
    lost: dict[str, str] = {}
    mine = me()
    for name in names:
        parsed = parse(rows[name][0]) if name in rows else None
        if name not in rows:
            lost[name] = f"the {what} was dropped by someone else"
        elif parsed is None or parsed[0] != mine:
            lost[name] = "its comment now names another owner"
        elif expired(parsed[1], now):
            lost[name] = "it ended before this renewal"
        else:
            label = mine.label(**{**parsed[1], "exp": round(now + lease_ttl(strict=False), 1)})
            try:
                await client.command(f"ALTER {target(name)} MODIFY COMMENT {_literal(label)}", use_database=False)
            except Exception:
                # Dropped between the look and the renewal (its owner let it go): lost if still held.
                if await client.command(f"EXISTS {target(name)}", use_database=False) not in (0, "0"):
                    raise
                lost[name] = f"the {what} was dropped by someone else"
    return lost, float(now)


async def _connect(server: ClickHouseServer) -> Any:
    from .._drivers import clickhouse as ch_driver

    return await ch_driver.connect(**server.client_kwargs(server.database), autogenerate_session_id=False)


async def _close(client: Any) -> None:
    await client.close()


def _server_key(server: ClickHouseServer) -> str:
    return f"{server.url}#{server.username}"


def _where(server: ClickHouseServer) -> tuple[str, int]:
    return (server.host, server.port)


_keeper = Keeper("ClickHouse database", _server_key, _connect, _close, renew, _where)
# Prefix mode: the lease of a table prefix lives in its marker table's comment.
_markers = Keeper("ClickHouse table prefix", _server_key, _connect, _close, renew_markers, _where)


def keeper() -> Keeper:
    return _keeper


def markers() -> Keeper:
    return _markers


async def comment(client: Any, server: ClickHouseServer, *, kept: bool = False) -> str:
    """The label of a database (or marker table) made now: with a lease on an external server,
    unless kept."""
    if server.source != "external" or kept:
        return lease_label({"kept": True} if kept else {}, None)

    async def now() -> float:
        return await server_now(client)

    return lease_label({}, await _keeper.expiry(server, now))


def hold(server: ClickHouseServer, name: str) -> None:
    if server.source == "external":
        _keeper.hold(server, name)


def hold_marker(server: ClickHouseServer, name: str) -> None:
    """Keep the lease of the marker table ``name`` (``<database>.<table>``) alive."""
    if server.source == "external":
        _markers.hold(server, name)


def let_go(name: str) -> None:
    """Stop renewing the lease of database (or marker table) ``name``."""
    _keeper.let_go(name)
    _markers.let_go(name)


def lost(name: str) -> str | None:
    """Why the lease of database (or marker table) ``name`` was lost; None while it holds."""
    return _keeper.lost(name) or _markers.lost(name)


def check(name: str) -> None:
    """Raise ``IsolationBroken`` when the lease of database (or marker table) ``name`` was lost."""
    why = lost(name)
    if why is not None:
        raise IsolationBroken(why)


_ALL = Scope()


def reapable(text: str, now: float, *, kept: bool = False, scope: Scope = _ALL) -> bool:
    """Whether a database (or marker table) labelled ``text`` may be dropped: one of ours, named by
    ``scope``, whose owner is provably dead or whose lease has ended; a kept one only when ``kept``
    asks for those too."""
    parsed = parse(text)
    if parsed is None or not scope.covers(parsed[0]):
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
