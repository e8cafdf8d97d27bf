"""A new event loop per test (pytest-asyncio's default): what is loop-bound closes with the loop,
what is not (PostgreSQL sessions, Redis leases, warm clones) carries over to the next loop, and
nothing of ours runs in a test's loop while the test runs. Each test runs loops of its own with
``asyncio.Runner``, as pytest-asyncio does, from a plain (sync) test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
import redis.asyncio as aredis

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._drivers import asyncpg_sessions
from isolated_env._runtime import close_current_runtime
from isolated_env._servers import postgres as pg_servers

T = TypeVar("T")


def in_a_new_loop(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` in a loop of its own and close that loop's runtime before the loop closes, as
    the plugin does for pytest-asyncio's loops."""

    async def main() -> T:
        try:
            return await fn()
        finally:
            await close_current_runtime()

    with asyncio.Runner() as runner:
        return runner.run(main())


@pytest.fixture
def server_dsn() -> Iterator[str]:
    server = asyncio.run(pg_servers.ensure_server(resolve()))
    yield server.dsn()


async def _admin_fetch(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def test_a_transaction_mode_session_carries_over_to_the_next_loop_clean(server_dsn: str) -> None:
    async def dirty() -> int:
        async with ie.isolated_postgres() as db:
            # Session state a ROLLBACK does not undo: a lock, and asyncpg's prepared statements.
            await db.fetchval("SELECT pg_advisory_lock(4242)")
            await db.fetchval("SELECT $1::int", 1)
            return int(db.connection.get_server_pid())

    first = in_a_new_loop(dirty)
    assert asyncpg_sessions.parked() >= 1

    async def look() -> tuple[int, int, int]:
        async with ie.isolated_postgres() as db:
            return (db.connection.get_server_pid(),
                    await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                      "AND pid = pg_backend_pid()"),
                    await db.fetchval("SELECT count(*) FROM pg_prepared_statements"))

    pid, locks, prepared = in_a_new_loop(look)
    assert pid == first  # the same server session, taken over by the new loop's connection
    assert locks == 0  # DISCARD ALL left nothing of the last test's session
    assert prepared <= 2  # only this loop's own statements, not the last one's


def test_each_session_taken_over_keeps_its_own_process_id_and_cancel_key(server_dsn: str) -> None:
    async def two() -> list[tuple[int, int]]:
        async with ie.Environment() as env:
            dbs = [await env.enter(ie.isolated_postgres(), name=f"db{i}") for i in range(3)]
            return [(db.connection.get_server_pid(), await db.fetchval("SELECT pg_backend_pid()")) for db in dbs]

    for _ in range(3):  # three sessions parked, then taken over in another order
        pairs = in_a_new_loop(two)
        assert all(told == real for told, real in pairs), pairs
        assert len({real for _, real in pairs}) == 3


def test_a_parked_session_that_died_is_not_handed_out(server_dsn: str) -> None:
    async def pid_of_a_test() -> int:
        async with ie.isolated_postgres() as db:
            return int(db.connection.get_server_pid())

    first = in_a_new_loop(pid_of_a_test)
    assert asyncio.run(_admin_fetch(server_dsn, "SELECT pg_terminate_backend($1)", first))
    for _ in range(100):
        if not asyncio.run(_admin_fetch(server_dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", first)):
            break
    second = in_a_new_loop(pid_of_a_test)  # works, on a new session
    assert second != first


def test_close_all_ends_the_parked_sessions(server_dsn: str) -> None:
    async def pid_of_a_test() -> int:
        async with ie.isolated_postgres() as db:
            return int(db.connection.get_server_pid())

    pid = in_a_new_loop(pid_of_a_test)
    assert asyncpg_sessions.parked() >= 1
    asyncpg_sessions.close_all()
    assert asyncpg_sessions.parked() == 0
    for _ in range(200):
        if not asyncio.run(_admin_fetch(server_dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)):
            break
    else:
        pytest.fail(f"the parked session {pid} outlived close_all()")


def test_a_redis_lease_carries_over_to_the_next_loop() -> None:
    from isolated_env.resources import redis as resource

    async def one() -> int:
        async with ie.isolated_redis() as r:
            await r.set("k", "v")
            return int(r.db)

    db = in_a_new_loop(one)

    async def again() -> tuple[int, int, bytes | None]:
        async with ie.isolated_redis() as r:
            control = aredis.from_url(r.server.url(0))
            try:
                return int(r.db), int(await r.dbsize()), await control.get(f"ie:slot:{r.db}")
            finally:
                await control.aclose()

    db2, size, lease_owner = in_a_new_loop(again)
    assert db2 == db and size == 0  # the same database, flushed, no new lease taken
    assert lease_owner is not None and lease_owner.decode() == resource._owner()  # still this process's


def test_nothing_of_ours_runs_in_the_loop_while_a_test_does() -> None:
    """Database mode's refills and drops run in the background loop, not in the test's."""

    async def a_test() -> set[str]:
        async with ie.Environment() as env:
            await env.enter(ie.isolated_postgres(mode="database"))
            await env.enter(ie.isolated_postgres(), name="tx")
            await env.enter(ie.isolated_redis())
            await asyncio.sleep(0.05)  # give anything that would start in this loop the time to
            return {task.get_name() for task in asyncio.all_tasks() if task is not asyncio.current_task()}

    assert in_a_new_loop(a_test) == set()
    assert in_a_new_loop(a_test) == set()  # and in the next loop, served by the warm clones


def test_a_closed_loop_leaves_no_descriptor_of_its_own() -> None:
    async def a_test() -> None:
        async with ie.Environment() as env:
            db = await env.enter(ie.isolated_postgres(mode="database"))
            await db.fetchval("SELECT 1")
            await (await env.enter(ie.isolated_postgres(), name="tx")).fetchval("SELECT 1")
            await (await env.enter(ie.isolated_redis())).ping()

    for _ in range(3):  # warm up: sessions parked, leases banked, the background loop running
        in_a_new_loop(a_test)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        in_a_new_loop(a_test)
    # a descriptor left per loop would show as 20 or more; a few may be sessions the background
    # loop parks for the warm pool meanwhile
    assert len(os.listdir("/proc/self/fd")) <= before + 8


def _client_id() -> Callable[[], Awaitable[tuple[int, int]]]:
    async def one() -> tuple[int, int]:
        async with ie.isolated_redis() as r:
            return int(r.db), int(await r.client_id())

    return one


async def _admin_redis(url: str, *args: Any) -> Any:
    admin = aredis.from_url(url)
    try:
        return await admin.execute_command(*args)
    finally:
        await admin.aclose()


def test_the_redis_test_connection_carries_over_to_the_next_loop() -> None:
    """Its socket, not redis-py's object: the server session of the last loop serves the next one."""
    from isolated_env.resources import redis as resource

    db, first = in_a_new_loop(_client_id())
    db2, second = in_a_new_loop(_client_id())
    assert (db2, second) == (db, first)  # the same database and the same server-side client
    url = resource._bank.banked()[0].server.url(0)
    # A parked socket the server ended meanwhile is dropped for a new connection.
    assert asyncio.run(_admin_redis(url, "CLIENT", "KILL", "ID", str(second))) == 1
    db3, third = in_a_new_loop(_client_id())
    assert db3 == db and third != second
    # The run's end closes the parked sockets: the server sees the client leave.
    resource.close_parked()
    for _ in range(200):
        if str(third).encode() not in asyncio.run(_admin_redis(url, "CLIENT", "LIST", "ID", str(third))):
            break
    else:
        pytest.fail(f"the parked Redis connection {third} outlived close_parked()")
    db4, fourth = in_a_new_loop(_client_id())
    assert db4 == db and fourth not in (first, third)


def _flushers(url: str, db: int) -> set[int]:
    """The server's clients logged in as the admin user, selected to ``db``, last seen flushing it."""
    listing = asyncio.run(_admin_redis(url, "CLIENT", "LIST"))
    found = set()
    for line in listing.decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("db") == str(db) and fields.get("cmd") == "flushdb" and fields.get("user") == "default":
            found.add(int(fields["id"]))
    return found


def test_a_slot_taken_over_by_a_new_loop_is_flushed_over_its_own_admin_connection() -> None:
    """One admin connection per slot flushes it in whichever loop holds it, is replaced when the
    server ends it, and closes with the run's parked sockets."""
    from isolated_env.resources import redis as resource

    async def fill() -> int:
        async with ie.isolated_redis() as r:
            assert await r.dbsize() == 0  # what the last loop left was flushed
            await r.set("k", "v")
            return int(r.db)

    db = in_a_new_loop(fill)
    url = resource._bank.banked()[0].server.url(0)
    assert in_a_new_loop(fill) == db
    first = _flushers(url, db)
    assert len(first) == 1
    assert in_a_new_loop(fill) == db
    assert _flushers(url, db) == first  # the same connection, carried from loop to loop
    assert asyncio.run(_admin_redis(url, "CLIENT", "KILL", "ID", str(*first))) == 1
    assert in_a_new_loop(fill) == db  # its flush went over a new connection: the next loop finds it empty
    second = _flushers(url, db)
    assert len(second) == 1 and second != first
    assert in_a_new_loop(fill) == db
    resource.close_parked()
    for _ in range(200):
        if not _flushers(url, db) & second:
            break
    else:
        pytest.fail(f"the admin connection {second} outlived close_parked()")


def test_a_flush_over_the_admin_socket_says_why_it_was_refused_and_keeps_no_socket() -> None:
    import dataclasses

    import redis.exceptions as rex

    from isolated_env.resources._redis_flusher import RawAdmin

    async def refused() -> RawAdmin:
        async with ie.isolated_redis() as r:
            admin = RawAdmin(dataclasses.replace(r.server, password="not-the-password"), int(r.db))
            with pytest.raises(rex.AuthenticationError, match="WRONGPASS"):
                await admin.flushdb()
            return admin

    assert in_a_new_loop(refused)._sock is None
