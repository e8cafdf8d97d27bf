"""Canary for the private seams of asyncpg (``Transaction._state``, ``Connection._top_xact``, and
``Connection._transport`` for a connection let go of without a Terminate).

Transaction mode sends ``BEGIN`` itself (one round trip) and then tells asyncpg that this is the
connection's top transaction, so a test's own ``db.transaction()`` becomes a SAVEPOINT. Should a
new asyncpg change what those attributes mean, a test's ``transaction()`` could COMMIT for real:
these tests fail first. Both paths (the seam, and the public API used outside the tested range)
are checked on a real server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from asyncpg.transaction import TransactionState

import isolated_env as ie
from isolated_env._drivers import _seams
from isolated_env._drivers import asyncpg as driver
from isolated_env.resources.postgres import transaction


def test_installed_asyncpg_is_inside_the_tested_range() -> None:
    version = _seams.installed_version("asyncpg")
    assert _seams.tested("asyncpg", driver.SEAM_RANGE), (
        f"asyncpg {version} is outside {driver.SEAM_RANGE}, the range the top-transaction seam was "
        "checked on: read asyncpg/transaction.py (Transaction._state, Connection._top_xact) of the new "
        "release, run these tests with the range widened, and widen SEAM_RANGE if they pass"
    )


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    """A private database (database mode does not use the seam), with one table."""
    async with ie.isolated_postgres(mode="database") as db:
        await db.execute("CREATE TABLE items (n int)")
        yield db.dsn


@pytest.fixture(params=["seam", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs through the seam, and through the public API (as outside the tested range)."""
    if request.param == "public":
        monkeypatch.setattr(driver, "SEAM_RANGE", "<0")
    assert driver._seam_tested() is (request.param == "seam")
    return str(request.param)


async def test_private_attributes_mean_what_the_seam_assumes(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert conn._top_xact is None
        tr = conn.transaction()
        assert tr._state is TransactionState.NEW
        await tr.start()
        assert conn._top_xact is tr and tr._state is TransactionState.STARTED
        inner = conn.transaction()
        await inner.start()
        assert conn._top_xact is tr, "a nested transaction must not replace the top one"
        await inner.rollback()
        await tr.rollback()
        assert conn._top_xact is None and tr._state is TransactionState.ROLLEDBACK
        assert not conn.is_in_transaction()
    finally:
        await conn.close()


async def test_a_detached_session_lives_on_until_it_is_ended_elsewhere(dsn: str) -> None:
    """Database mode lets go of a test's connection in the test's loop without a word to the server
    (through ``Connection._transport``, private), and the background loop ends the session."""
    conn = await asyncpg.connect(dsn)
    pid = conn.get_server_pid()
    watcher = await asyncpg.connect(dsn)
    alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
    try:
        session = driver.detach(conn)
        assert session is not None and conn.is_closed()
        assert await watcher.fetchval(alive, pid) == 1  # no Terminate was sent, no descriptor closed it
        driver.end_session(session)
        assert session.fileno() == -1
        for _ in range(500):
            if await watcher.fetchval(alive, pid) == 0:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"the session {pid} outlived end_session()")
    finally:
        await watcher.close()


async def test_nested_transaction_is_a_savepoint_that_never_commits_the_outer_one(dsn: str, path: str) -> None:
    conn, other = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        for _ in range(2):  # the connection is reused by the next test, as the pool does
            tr = await driver.begin(conn, transaction._GUARD)
            assert conn.is_in_transaction() and conn._top_xact is tr
            async with conn.transaction():  # the test's own: must be a SAVEPOINT
                await conn.execute("INSERT INTO items VALUES (1)")
            assert conn.is_in_transaction(), "leaving the test's transaction() ended the outer one"
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO items VALUES (2)")
                    1 / 0  # noqa: B018
            assert [r["n"] for r in await conn.fetch("SELECT n FROM items")] == [1]  # back to the savepoint
            assert await other.fetchval("SELECT count(*) FROM items") == 0, "a savepoint's exit committed"
            assert await driver.rollback(conn, tr, check=transaction._CHECK) is False
            assert not conn.is_in_transaction() and conn._top_xact is None
            assert await conn.fetchval("SELECT count(*) FROM items") == 0
    finally:
        await conn.close()
        await other.close()


@pytest.mark.parametrize(
    ("statement", "escaped"),
    [
        ("COMMIT", True),
        ("ROLLBACK", True),
        ("COMMIT; BEGIN; INSERT INTO items VALUES (3)", True),
        ("SELECT * FROM no_such_table", False),  # the test's statement failed: not an escape
        ("INSERT INTO items VALUES (4)", False),
    ],
)
async def test_an_ended_outer_transaction_is_detected(dsn: str, path: str, statement: str, escaped: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        tr = await driver.begin(conn, transaction._GUARD)
        try:
            await conn.execute(statement)
        except asyncpg.UndefinedTableError:
            pass
        assert await driver.rollback(conn, tr, check=transaction._CHECK) is escaped
        assert not conn.is_in_transaction() and conn._top_xact is None
        assert await conn.fetchval("SELECT count(*) FROM items WHERE n IN (3, 4)") == 0
        # and the connection can carry the next test's transaction
        tr = await driver.begin(conn, transaction._GUARD)
        assert await driver.rollback(conn, tr, check=transaction._CHECK) is False
    finally:
        await conn.close()


async def test_transaction_mode_end_to_end_on_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "SEAM_RANGE", "<0")
    table = f"t{uuid.uuid4().hex[:8]}"
    async with ie.isolated_postgres() as db:
        await db.execute(f"CREATE TABLE {table} (x int)")
        async with db.transaction():
            await db.execute(f"INSERT INTO {table} VALUES (1)")
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 1
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT to_regclass($1)", table) is None
    with pytest.raises(ie.IsolationBroken):
        async with ie.isolated_postgres() as db:
            await db.execute("COMMIT")
