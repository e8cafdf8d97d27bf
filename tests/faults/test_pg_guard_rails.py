"""Finding 6 (PostgreSQL): a test cannot harm another. On the embedded server tests connect as a
role that owns no database: each harmful command is refused with PostgreSQL's own error, in both
modes, from the handle's connection and from ``.dsn``, and a test cannot connect to another test's
database; ``superuser=True`` gives them back on a server of the test's own."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

import isolated_env as ie
from isolated_env._contract import current_settings
from isolated_env._runtime import close_current_runtime
from isolated_env._servers.postgres import PostgresServer, ensure_server
from isolated_env.resources.postgres import prune, settle, template_database, warm_pool_statistics
from isolated_env.resources.postgres.roles import TEST_ROLE

MODES = ["transaction", "database"]
SCHEMA = ie.PostgresTemplate(name="rails", sql="CREATE TABLE items (x int)")


@pytest.fixture
async def server() -> PostgresServer:
    server = await ensure_server(current_settings())
    if server.source != "embedded":
        pytest.skip("the guard rails are set up on the embedded server (docs/postgres.md: external servers)")
    return server


@pytest.fixture
async def admin(server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**server.connect_kwargs())
    yield conn
    await conn.close()


@pytest.mark.parametrize("mode", MODES)
async def test_the_test_connects_as_the_restricted_role(mode: str, server: PostgresServer) -> None:
    async with ie.isolated_postgres(mode=mode, template=SCHEMA) as db:
        row = await db.fetchrow("SELECT current_user AS who, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                                "WHERE rolname = current_user")
        assert dict(row) == {"who": TEST_ROLE, "rolsuper": False, "rolcreatedb": False, "rolcreaterole": False}
        # database mode logs in as the database's own role, which becomes the test role
        login = db.database if mode == "database" else TEST_ROLE
        assert await db.fetchval("SELECT session_user") == login and db.user == login
        other = await asyncpg.connect(db.dsn)
        try:
            assert await other.fetchval("SELECT current_user") == TEST_ROLE
        finally:
            await other.close()
        # what tests do still works: DDL, writes, schemas, temporary tables, advisory locks
        await db.execute("CREATE SCHEMA mine; CREATE TABLE mine.t (x int); INSERT INTO items VALUES (1)")
        await db.execute("CREATE TEMP TABLE scratch (x int); SELECT pg_advisory_xact_lock(7)")
    async with ie.isolated_postgres(mode=mode, template=SCHEMA, superuser=True) as db:
        assert await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


@pytest.mark.parametrize("mode", MODES)
async def test_dropping_another_tests_database_is_refused(mode: str) -> None:
    async with ie.isolated_postgres(mode="database") as victim:
        async with ie.isolated_postgres(mode=mode) as db:
            other = await asyncpg.connect(db.dsn)  # DROP DATABASE cannot run inside the test's transaction
            try:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner of database"):
                    await other.execute(f'DROP DATABASE "{victim.database}" WITH (FORCE)')
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied to create database"):
                    await other.execute("CREATE DATABASE ie_not_allowed")
            finally:
                await other.close()
        assert await victim.fetchval("SELECT 1") == 1  # untouched


@pytest.mark.parametrize("mode", MODES)
async def test_connecting_to_another_tests_database_is_refused(mode: str, admin: asyncpg.Connection) -> None:
    async with ie.isolated_postgres(mode="database") as victim, ie.isolated_postgres(mode=mode) as db:
        # the name is easy to guess (ie_db_<run>_<pid>_<n>); the test's own credentials are not enough
        refused = f'permission denied for database "{victim.database}"'
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refused):
            await asyncpg.connect(**db.server.connect_kwargs(victim.database))
        if mode == "database":  # and the other way round
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f'database "{db.database}"'):
                await asyncpg.connect(**victim.server.connect_kwargs(db.database))
        own = await asyncpg.connect(victim.dsn)  # the control: its own test gets in
        try:
            assert await own.fetchval("SELECT current_database()") == victim.database
        finally:
            await own.close()
        victim_role = victim.user
    await settle()  # its role goes with the database
    assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", victim_role) == 0


async def test_a_lease_takes_over_a_session_its_own_role_opened_ahead(
    server: PostgresServer, admin: asyncpg.Connection,
) -> None:
    """The warm pool opens each clone's session as the clone's own role before it is asked for; a
    lease from any loop and thread takes over that session, and only that one: its own database as
    its own role, unable to become another clone's role or the superuser."""
    async with ie.isolated_postgres(mode="database", template=SCHEMA):
        pass  # the pool is made, and fills up in the background
    name = await template_database(server, SCHEMA)
    with anyio.fail_after(30):
        while not any(s.ready >= 2 for s in await warm_pool_statistics() if s.template == name):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    asked = await admin.fetchval("SELECT clock_timestamp()")
    me = "SELECT current_database() AS db, session_user AS login, current_user AS who, pg_backend_pid() AS pid"
    started = "SELECT backend_start FROM pg_stat_activity WHERE pid = $1"  # hidden from the test's own role

    def lease_in_a_loop_of_its_own(other: str) -> tuple[str, dict[str, Any]]:
        async def run() -> tuple[str, dict[str, Any]]:
            watcher = await asyncpg.connect(**server.connect_kwargs())
            try:
                async with ie.isolated_postgres(mode="database", template=SCHEMA) as db:
                    for refused in ("SET ROLE", "SET SESSION AUTHORIZATION"):
                        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied to set"):
                            async with db.transaction():
                                await db.execute(f'{refused} "{other}"')  # the other test's role
                    row = dict(await db.fetchrow(me))
                    return db.database, {**row, "started": await watcher.fetchval(started, row["pid"])}
            finally:
                await watcher.close()
                await close_current_runtime()

        return asyncio.run(run())

    async with ie.isolated_postgres(mode="database", template=SCHEMA) as db:
        row = dict(await db.fetchrow(me))
        leases = [(db.database, {**row, "started": await admin.fetchval(started, row["pid"])})]
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f'permission denied to set role "{server.user}"'):
            await db.execute(f'SET ROLE "{server.user}"')  # the superuser
        leases.append(await anyio.to_thread.run_sync(lease_in_a_loop_of_its_own, db.database))
    for database, row in leases:
        assert (row["db"], row["login"], row["who"]) == (database, database, TEST_ROLE)
        assert row["started"] < asked  # the session the pool opened ahead, not one the lease opened
    assert leases[0][0] != leases[1][0]


async def test_a_forked_child_never_leases_its_parents_clones(server: PostgresServer) -> None:
    """A forked child (a server forking workers, multiprocessing's fork) inherits the parent's warm
    pools in memory, whose clones the parent will hand out: it makes clones of its own."""
    async with ie.isolated_postgres(mode="database", template=SCHEMA):
        pass  # the parent's pool, filling up in the background
    name = await template_database(server, SCHEMA)
    with anyio.fail_after(30):
        while not any(s.ready >= 1 for s in await warm_pool_statistics() if s.template == name):  # noqa: ASYNC110
            await anyio.sleep(0.01)

    def lease_in_a_child() -> str:
        async def lease() -> str:
            try:
                async with ie.isolated_postgres(mode="database", template=SCHEMA) as db:
                    return f"{db.database} {await db.fetchval('SELECT count(*) FROM items')}"
            finally:
                await settle()
                await close_current_runtime()

        read, write = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads running (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(write, asyncio.run(lease()).encode())
            finally:
                os._exit(0)
        os.close(write)
        deadline = time.monotonic() + 60
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        with os.fdopen(read) as pipe:
            return pipe.read()

    got = await anyio.to_thread.run_sync(lease_in_a_child)
    try:
        child = got.split(" ")[0]
        assert got.endswith(" 0") and child.startswith("ie_db_"), got
        assert f"_{os.getpid()}_" not in child  # clone names carry their maker's pid
    finally:
        await prune(server, kept=False, orphans=True)  # the clones the child made and did not lease


@pytest.mark.parametrize("mode", MODES)
async def test_ending_another_session_is_refused(mode: str) -> None:
    async with ie.isolated_postgres(mode="database") as victim:
        async with ie.isolated_postgres(mode=mode) as db:
            for fn in ("pg_terminate_backend", "pg_cancel_backend"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f"permission denied for function {fn}"):
                    async with db.transaction():
                        await db.execute(f"SELECT {fn}($1)", victim.get_server_pid())
        assert await victim.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("mode", MODES)
async def test_alter_system_is_refused(mode: str) -> None:
    async with ie.isolated_postgres(mode=mode) as db:
        other = await asyncpg.connect(db.dsn)  # ALTER SYSTEM cannot run inside a transaction either
        try:
            refused = 'permission denied to set parameter "work_mem"'
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refused):
                await other.execute("ALTER SYSTEM SET work_mem = '1MB'")
        finally:
            await other.close()


@pytest.mark.parametrize("mode", MODES)
async def test_templates_cannot_be_reached_or_reopened(mode: str, server: PostgresServer) -> None:
    name = await template_database(server, SCHEMA)
    async with ie.isolated_postgres(mode=mode, template=SCHEMA) as db:
        with pytest.raises(asyncpg.PostgresError, match="not currently accepting connections"):
            await asyncpg.connect(**db.server.connect_kwargs(name))
        other = await asyncpg.connect(db.dsn)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner of database"):
                await other.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        finally:
            await other.close()


async def test_session_advisory_locks_do_not_outlive_the_test(server: PostgresServer) -> None:
    key = int.from_bytes(uuid.uuid4().bytes[:4], "big") >> 1
    async with ie.isolated_postgres() as db:
        watcher = await asyncpg.connect(**server.connect_kwargs(db.database))  # advisory locks are per database
        try:
            await db.execute("SELECT pg_advisory_lock($1)", key)  # a session lock: ROLLBACK does not release it
            assert await watcher.fetchval("SELECT pg_try_advisory_lock($1)", key) is False
        except BaseException:
            await watcher.close()
            raise
    try:
        # the pooled connection is idle now, and holds nothing
        assert await watcher.fetchval("SELECT pg_try_advisory_lock($1)", key) is True
        await watcher.execute("SELECT pg_advisory_unlock($1)", key)
    finally:
        await watcher.close()


async def test_session_settings_and_temporary_tables_do_not_reach_the_next_test() -> None:
    async with ie.isolated_postgres() as db:
        pid = db.get_server_pid()
        defaults = await db.fetchrow("SELECT current_setting('work_mem') AS w, current_setting('search_path') AS p")
        await db.execute("SET work_mem = '1234kB'; SET search_path = pg_catalog; CREATE TEMP TABLE mine (x int)")
        await db.execute("SELECT set_config('application_name', 'leaky', false)")
    async with ie.isolated_postgres() as db:
        assert db.get_server_pid() == pid  # the same pooled session
        row = await db.fetchrow("SELECT current_setting('work_mem') AS w, current_setting('search_path') AS p")
        assert row == defaults
        assert await db.fetchval("SELECT current_setting('application_name')") != "leaky"
        assert await db.fetchval("SELECT to_regclass('pg_temp.mine')") is None


@pytest.mark.parametrize("mode", MODES)
async def test_superuser_true_gets_a_server_of_its_own(mode: str, server: PostgresServer) -> None:
    async with ie.isolated_postgres(mode="database") as victim:
        async with ie.isolated_postgres(mode=mode, template=SCHEMA, superuser=True) as db:
            assert await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True
            assert db.server.host != server.host and await db.fetchval("SELECT count(*) FROM items") == 0
            await db.execute("INSERT INTO items VALUES (1)")  # commits: the server goes with the test
            other = await asyncpg.connect(db.dsn)
            try:  # what the rails refuse on the shared server works here ...
                assert await db.fetchval("SELECT pg_cancel_backend($1)", other.get_server_pid()) is True
                await other.execute("ALTER SYSTEM SET work_mem = '5MB'")
                await other.execute("CREATE DATABASE scratch")
                await other.execute("DROP DATABASE scratch WITH (FORCE)")
                assert await other.fetchval("SELECT count(*) FROM items") == 1
                # ... and reaches nothing of the shared server's
                assert await other.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                            victim.database) == 0
            finally:
                await other.close()
            directory = Path(db.server.host)
            assert directory.name in os.listdir(directory.parent)
        assert directory.name not in os.listdir(directory.parent)  # stopped with its test, its directory removed
        assert await victim.fetchval("SELECT current_setting('work_mem')") != "5MB"


async def test_superuser_true_cannot_be_kept() -> None:
    with pytest.raises(ie.ConfigError, match=r"superuser=True, keep_on_failure=True\): the superuser's server"):
        async with ie.isolated_postgres(superuser=True, keep_on_failure=True):
            pass


async def test_superuser_must_be_a_bool() -> None:
    with pytest.raises(ie.ConfigError, match=r"superuser='yes'\): superuser must be True or False"):
        async with ie.isolated_postgres(superuser="yes"):  # type: ignore[arg-type]
            pass



def test_a_new_server_starts_with_its_rails_from_the_cached_cluster(private_state_dir: Path) -> None:
    """The role and the base are in the cluster every server is copied from, and the start gives the
    role its password: a server that no test has used yet is ready for tests."""
    from isolated_env._config import resolve
    from isolated_env._servers import _pg_rails, registry
    from isolated_env._servers.postgres import PROVIDER
    from isolated_env.resources.postgres.roles import BASE, role_password

    view = PROVIDER.embedded.join(resolve(state_dir=private_state_dir))  # started alone, nothing else
    try:
        assert (Path(view.host) / _pg_rails.MARKER).exists()

        async def check() -> None:
            admin = await asyncpg.connect(**view.connect_kwargs())
            try:
                base = await admin.fetchrow("SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1",
                                            BASE)
                assert base is not None and base["datistemplate"] and not base["datallowconn"]
                role = await admin.fetchrow("SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
                                            "WHERE rolname = $1", TEST_ROLE)
                assert role is not None and dict(role) == {
                    "rolsuper": False, "rolcreatedb": False, "rolcreaterole": False, "rolcanlogin": True}
                owner = await admin.fetchval("SELECT datdba::regrole::text FROM pg_database WHERE datname = $1", BASE)
                assert owner == "postgres"  # the role owns no database
            finally:
                await admin.close()
            tests = await asyncpg.connect(**{**view.connect_kwargs("postgres"), "user": TEST_ROLE,
                                             "password": role_password(view)})
            try:
                assert await tests.fetchval("SELECT current_user") == TEST_ROLE
            finally:
                await tests.close()

        anyio.run(check)
    finally:
        assert registry.release("postgres", private_state_dir)
