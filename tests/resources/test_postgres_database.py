"""isolated_postgres(mode="database"): private databases cloned from templates, on the real server."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import pytest

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._contract import current_settings
from isolated_env._redact import redact_url
from isolated_env._servers import registry
from isolated_env._servers.postgres import PostgresServer, ensure_server
from isolated_env.resources.postgres import (
    DatabaseHandle,
    PostgresTemplate,
    WarmPoolStatistics,
    build_template,
    forget_templates,
    kept_databases,
    prune,
    settle,
    split_sql,
    template_database,
    warm_pool_statistics,
)

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@pytest.fixture
async def server() -> PostgresServer:
    return await ensure_server(current_settings())


@pytest.fixture
async def admin(server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(server.dsn())
    yield conn
    await conn.close()


async def until(done: Callable[[T], bool], probe: Callable[[], Awaitable[T]]) -> T:
    """Poll ``probe`` until ``done`` says yes (background work has no event to wait on)."""
    with anyio.fail_after(30):
        while not done(value := await probe()):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return value


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def database_exists(admin: asyncpg.Connection, name: str) -> bool:
    return bool(await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name))


SCHEMA = PostgresTemplate(
    name="test-users",
    sql="""
        CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL);
        INSERT INTO users (email) VALUES ('seed@example.com');
    """,
)


# --- isolation ---------------------------------------------------------------------------------


async def test_data_committed_elsewhere_is_visible_private_and_gone_after_release(
    admin: asyncpg.Connection,
) -> None:
    async with ie.isolated_postgres(mode="database", template=SCHEMA) as a, \
            ie.isolated_postgres(mode="database", template=SCHEMA) as b:
        assert isinstance(a, DatabaseHandle) and isinstance(a, ie.PostgresHandle) and a.mode == "database"
        assert a.database != b.database and a.dsn != b.dsn
        other = await asyncpg.connect(a.dsn)  # an independent client, as an app's pool would be
        try:
            await other.execute("INSERT INTO users (email) VALUES ('committed@example.com')")
        finally:
            await other.close()
        assert await a.fetchval("SELECT count(*) FROM users WHERE email = 'committed@example.com'") == 1
        assert await b.fetchval("SELECT count(*) FROM users WHERE email = 'committed@example.com'") == 0
        assert await b.fetchval("SELECT email FROM users") == "seed@example.com"
        # Commits of the handle's own connection are allowed too.
        await a.execute("BEGIN; INSERT INTO users (email) VALUES ('x@example.com'); COMMIT")
        name, dsn, own_role = a.database, a.dsn, a.user == a.database
    await settle()
    assert not await database_exists(admin, name)
    # on the embedded server its own login role went with it (an external server's user stays)
    with pytest.raises(asyncpg.InvalidPasswordError if own_role else asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(dsn)


async def test_default_template_is_an_empty_database() -> None:
    async with ie.isolated_postgres(mode="database") as db:
        assert await db.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        await db.execute("CREATE TABLE mine (x int)")
    async with ie.isolated_postgres(mode="database") as db:
        assert await db.fetchval("SELECT to_regclass('mine')") is None


async def test_100_concurrent_environments_never_share_a_database() -> None:
    names: dict[int, str] = {}
    seen: dict[int, list[int]] = {}
    all_in = anyio.Event()

    async def one(n: int) -> None:
        async with ie.Environment(capacity=100) as env:
            db = await env.enter(ie.isolated_postgres(mode="database", template=SCHEMA))
            names[n] = db.database
            await db.execute("INSERT INTO users (id, email) VALUES ($1, $2)", 1000 + n, f"{n}@example.com")
            if len(names) == 100:
                all_in.set()
            with anyio.fail_after(60):
                await all_in.wait()  # every database is held at the same time
            seen[n] = [row["id"] for row in await db.fetch("SELECT id FROM users WHERE id >= 1000")]

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(one, n)
    assert len(set(names.values())) == 100
    assert seen == {n: [1000 + n] for n in range(100)}


async def test_concurrency_is_capped_by_capacity_and_waited_for() -> None:
    held = peak = 0

    async def one() -> None:
        nonlocal held, peak
        async with ie.Environment(capacity=3) as env:
            await env.enter(ie.isolated_postgres(mode="database"))
            held += 1
            peak = max(peak, held)
            await anyio.sleep(0.02)
            held -= 1
            done.append(1)

    done: list[int] = []
    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(one)
    assert 1 <= peak <= 3  # capacity is never exceeded (the exact peak is the scheduler's business)
    assert len(done) == 12


async def test_warm_pool_hands_out_ready_clones_and_refills() -> None:
    async with ie.Environment(capacity=4) as env:
        await env.enter(ie.isolated_postgres(mode="database", template=SCHEMA))
    async def ours() -> list[WarmPoolStatistics]:
        stats = await warm_pool_statistics()
        return [s for s in stats if s.template == SCHEMA.database_name and s.capacity == 4]

    await until(lambda stats: bool(stats) and stats[0].ready >= stats[0].target, ours)
    [before] = await ours()
    async with ie.Environment(capacity=4) as env:
        await env.enter(ie.isolated_postgres(mode="database", template=SCHEMA))
    [after] = await ours()
    assert after.starved == before.starved  # served by a ready clone, no wait
    assert after.errors == 0


async def test_reset_restores_a_fresh_copy_under_the_same_dsn() -> None:
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres(mode="database", template=SCHEMA))
        dsn = db.dsn
        await db.execute("INSERT INTO users (email) VALUES ('dirty@example.com')")
        await env.reset()
        assert db.dsn == dsn
        assert await db.fetchval("SELECT count(*) FROM users") == 1
        other = await asyncpg.connect(dsn)
        try:
            assert await other.fetchval("SELECT email FROM users") == "seed@example.com"
        finally:
            await other.close()


# --- templates ---------------------------------------------------------------------------------


async def test_template_is_reused_while_its_hash_holds_and_rebuilt_once_when_it_changes(
    server: PostgresServer, admin: asyncpg.Connection
) -> None:
    name = unique("hash")
    v1 = PostgresTemplate(name=name, sql="CREATE TABLE t (a int)")
    same = PostgresTemplate(name=name, sql="CREATE TABLE t (a int)")
    v2 = PostgresTemplate(name=name, sql="CREATE TABLE t (a int, b int)")
    assert v1.digest == same.digest != v2.digest

    first = await build_template(server, v1)
    assert first.built and first.database == v1.database_name
    # A later run (nothing cached in the process) finds it on the server.
    forget_templates()
    assert not (await build_template(server, same)).built

    results = []

    async def build() -> None:
        results.append(await build_template(server, v2))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(build)
    assert sum(r.built for r in results) == 1
    assert {r.database for r in results} == {v2.database_name}
    row = await admin.fetchrow(
        "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1", v2.database_name
    )
    assert row is not None and row["datistemplate"] and not row["datallowconn"]  # never an open connection
    async with ie.isolated_postgres(mode="database", template=v2) as db:
        columns = await db.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_name = 't'")
        assert columns == 2
    await prune_templates(admin, [v1.database_name, v2.database_name])


async def prune_templates(admin: asyncpg.Connection, names: list[str]) -> None:
    """Drop templates built by a test, once their warm pools are full (so none is rebuilt)."""
    await until(
        lambda stats: not any(s.template in names and (s.in_flight or s.ready < s.target) for s in stats),
        warm_pool_statistics,
    )
    for name in names:
        await admin.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
        await admin.execute(f'DROP DATABASE "{name}"')


_RACE = """
import anyio, json, sys
from isolated_env._config import resolve
from isolated_env._contract import current_settings
from isolated_env._servers import registry
from isolated_env._servers.postgres import ensure_server
from isolated_env.resources.postgres import PostgresTemplate, build_template

async def setup(db):
    await db.execute("SELECT pg_sleep(0.3); CREATE TABLE slow (s int)")

async def main():
    server = await ensure_server(current_settings())
    tpl = PostgresTemplate(name=sys.argv[1], sql="CREATE TABLE t (a int)", setup=setup, version="1")
    result = await build_template(server, tpl)
    print(json.dumps({"built": result.built, "database": result.database}))

anyio.run(main)
"""


async def test_two_processes_racing_build_the_template_once(admin: asyncpg.Connection) -> None:
    name = unique("race")
    procs = [
        await anyio.open_process([sys.executable, "-c", _RACE, name], cwd=REPO) for _ in range(2)
    ]
    outputs = []
    for proc in procs:
        async with proc:
            assert proc.stdout is not None
            out = b""
            async for chunk in proc.stdout:
                out += chunk
            assert await proc.wait() == 0
            outputs.append(json.loads(out))
    assert sorted(o["built"] for o in outputs) == [False, True]
    await prune_templates(admin, [outputs[0]["database"]])


async def test_a_template_dropped_under_a_live_pool_is_built_again(admin: asyncpg.Connection) -> None:
    tpl = PostgresTemplate(name=unique("dropped"), sql="CREATE TABLE t (a int)")
    async with ie.Environment(capacity=2) as env:
        await env.enter(ie.isolated_postgres(mode="database", template=tpl))
    await prune_templates(admin, [tpl.database_name])  # what prune(server, templates=True) does
    for _ in range(6):  # more than the warm pool held: new clones are needed
        async with ie.Environment(capacity=2) as env:
            db = await env.enter(ie.isolated_postgres(mode="database", template=tpl))
            assert await db.fetchval("SELECT count(*) FROM t") == 0
    assert await database_exists(admin, tpl.database_name)
    await settle()
    await prune_templates(admin, [tpl.database_name])


async def test_bad_sql_is_a_template_error_naming_statement_and_template(
    server: PostgresServer, admin: asyncpg.Connection
) -> None:
    name = unique("bad")
    tpl = PostgresTemplate(
        name=name,
        sql="CREATE TABLE ok (a int);\n-- the next one is wrong\n"
        "CREATE TABLE broken (a nosuchtype);\nSELECT 1;",
    )
    with pytest.raises(ie.TemplateError) as info:
        async with ie.isolated_postgres(mode="database", template=tpl):
            pass  # pragma: no cover
    message = str(info.value)
    assert name in message and "CREATE TABLE broken (a nosuchtype)" in message
    assert "statement 2" in message and "line 3" in message and "nosuchtype" in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, asyncpg.PostgresError)
    leftovers = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"%{name}%")
    assert leftovers == []
    with pytest.raises(ie.TemplateError):  # not cached as built: it fails again, the same way
        await template_database(server, tpl)


async def test_files_and_setup_callable_build_the_template(tmp_path: Path, admin: asyncpg.Connection) -> None:
    schema = tmp_path / "schema.sql"
    schema.write_text(
        "CREATE TABLE items (id int PRIMARY KEY, note text DEFAULT 'a;b');\n"
        "CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN a + b; END; $$;\n"
    )
    stray: list[asyncpg.Connection] = []

    async def setup(db: ie.PostgresHandle) -> None:
        await db.execute("INSERT INTO items (id) VALUES (1)")
        stray.append(await asyncpg.connect(db.dsn))  # left open: the build must still finish

    tpl = PostgresTemplate(name=unique("files"), files=[schema], setup=setup, version="1")
    async with ie.isolated_postgres(mode="database", template=tpl) as db:
        assert await db.fetchval("SELECT note FROM items WHERE id = 1") == "a;b"
        assert await db.fetchval("SELECT add(2, 3)") == 5
    stray[0].terminate()

    changed = PostgresTemplate(name=tpl.name, files=[schema], setup=setup, version="2")
    assert changed.digest != tpl.digest
    schema.write_text("CREATE TABLE other (x int);")
    assert PostgresTemplate(name=tpl.name, files=[schema], setup=setup, version="1").digest != tpl.digest
    await prune_templates(admin, [tpl.database_name])


async def test_a_template_has_its_name_only_once_it_is_whole(admin: asyncpg.Connection) -> None:
    """Built under a name of its own and renamed as it is sealed: a warm pool copying the template
    while it is dropped and rebuilt finds no database to copy, never an empty one."""
    seen: dict[str, object] = {}

    async def setup(db: ie.PostgresHandle) -> None:
        await db.execute("INSERT INTO t VALUES (1)")
        seen["building_as"] = db.database
        seen["name_exists"] = await database_exists(admin, tpl.database_name)
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await admin.execute(f'CREATE DATABASE "{unique("copy")}" TEMPLATE "{tpl.database_name}"')

    tpl = PostgresTemplate(name=unique("whole"), sql="CREATE TABLE t (x int)", setup=setup)
    async with ie.isolated_postgres(mode="database", template=tpl) as db:
        assert await db.fetchval("SELECT count(*) FROM t") == 1
    assert seen["name_exists"] is False and seen["building_as"] != tpl.database_name
    assert not await database_exists(admin, str(seen["building_as"]))  # renamed, not copied
    await settle()
    await prune_templates(admin, [tpl.database_name])


async def test_failing_setup_is_a_template_error_and_leaves_nothing(admin: asyncpg.Connection) -> None:
    async def setup(db: ie.PostgresHandle) -> None:
        await db.execute("CREATE TABLE half (x int)")
        raise RuntimeError("migration 7 failed")

    tpl = PostgresTemplate(name=unique("setup"), setup=setup)
    with pytest.raises(ie.TemplateError, match="migration 7 failed"):
        async with ie.isolated_postgres(mode="database", template=tpl):
            pass  # pragma: no cover
    assert not await database_exists(admin, tpl.database_name)
    assert not await database_exists(admin, "ie_tpb_" + tpl.database_name.removeprefix("ie_tpl_"))  # nor half of it


async def test_transaction_mode_on_a_template() -> None:
    async with ie.isolated_postgres(template=SCHEMA) as db:
        assert db.mode == "transaction"
        await db.execute("INSERT INTO users (email) VALUES ('rolled@example.com')")
        assert await db.fetchval("SELECT count(*) FROM users") == 2
    async with ie.isolated_postgres(template=SCHEMA) as db:
        assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_a_template_that_is_not_a_template_object_is_a_config_error() -> None:
    with pytest.raises(ie.ConfigError, match="PostgresTemplate"):
        async with ie.isolated_postgres(mode="database", template="CREATE TABLE x (a int)"):
            pass  # pragma: no cover
    with pytest.raises(ie.ConfigError):
        PostgresTemplate(name="")


def test_split_sql_splits_like_psql() -> None:
    script = textwrap.dedent(
        """\
        -- a comment; with a semicolon
        CREATE TABLE a (x text DEFAULT 'it''s; fine', "we;ird" int);
        /* block; /* nested; */ still comment */ INSERT INTO a VALUES (E'\\';', 1);
        CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
        CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END;
        DO $$ BEGIN PERFORM 1; END $$;
        SELECT $1
        """
    )
    statements = split_sql(script)
    assert [line for line, _ in statements] == [2, 3, 4, 5, 6, 7]
    assert statements[0][1].endswith("int)")
    assert statements[1][1] == "INSERT INTO a VALUES (E'\\';', 1)"  # comments before a statement dropped
    assert "SELECT 1; $body$" in statements[2][1]
    assert statements[3][1].endswith("END; END")
    assert statements[5][1] == "SELECT $1"
    assert split_sql("  -- nothing\n ; ;") == []


# --- keep_on_failure and prune -----------------------------------------------------------------


@pytest.fixture
def unpin_afterwards() -> Iterator[None]:
    """Keeping a database pins the embedded server (so the evidence outlives the run); undo that, or
    the server would outlive this test run."""
    yield
    registry.pin("postgres", resolve().state_dir, pinned=False)


async def test_keep_on_failure_keeps_the_database_and_reports_its_dsn(
    server: PostgresServer, unpin_afterwards: None
) -> None:
    with pytest.raises(ZeroDivisionError) as info:
        async with ie.isolated_postgres(mode="database", template=SCHEMA, keep_on_failure=True) as db:
            await db.execute("INSERT INTO users (email) VALUES ('evidence@example.com')")
            name, dsn = db.database, db.dsn
            1 / 0  # noqa: B018
    notes = "\n".join(getattr(info.value, "__notes__", []))
    # the DSN of the user whose password the named file holds (the test's own is derived, not stored)
    assert redact_url(server.dsn(name)) in notes and "isolated-env prune" in notes
    if server.password_file:  # how to get the password, not the password itself
        assert server.password_file in notes and server.password not in notes
    await settle()
    conn = await asyncpg.connect(dsn)  # the evidence is still there to look at
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE email = 'evidence@example.com'") == 1
    finally:
        await conn.close()
    kept = {k.name: k for k in await kept_databases(server)}
    assert name in kept and "ZeroDivisionError" in kept[name].reason and kept[name].pid == os.getpid()

    assert name in await prune(server)
    assert name not in {k.name for k in await kept_databases(server)}


async def test_a_failed_outcome_keeps_only_with_keep_on_failure(
    server: PostgresServer, admin: asyncpg.Connection, unpin_afterwards: None
) -> None:
    async with ie.Environment() as env:  # what the pytest plugin does when the test body failed
        db = await env.enter(ie.isolated_postgres(mode="database", keep_on_failure=True))
        kept_name = db.database
        env.outcome = ie.Outcome.FAILED
    [kept] = env.kept
    assert kept.kind == "postgres" and kept_name in kept.where and "prune --kept" in kept.reach
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres(mode="database"))
        dropped_name = db.database
        env.outcome = ie.Outcome.FAILED
    assert env.kept == []
    async with ie.Environment() as env:
        await env.enter(ie.isolated_postgres(keep_on_failure=True))
        env.outcome = ie.Outcome.FAILED
    [nothing] = env.kept  # transaction mode cannot keep data, and says so instead of keeping nothing silently
    assert nothing.where.startswith("nothing") and "mode='database'" in nothing.reach
    await settle()
    assert await database_exists(admin, kept_name)
    assert not await database_exists(admin, dropped_name)
    assert kept_name in await prune(server, kept=True, orphans=True)


async def test_successful_test_with_keep_on_failure_is_dropped(admin: asyncpg.Connection) -> None:
    async with ie.isolated_postgres(mode="database", keep_on_failure=True) as db:
        name = db.database
    await settle()
    assert not await database_exists(admin, name)


# --- orphans -----------------------------------------------------------------------------------

_HOLDER = """
import anyio, json, sys
from isolated_env import Environment, isolated_postgres
from isolated_env.resources.postgres import warm_pool_statistics

async def main():
    async with Environment(capacity=3) as env:
        dbs = [await env.enter(isolated_postgres(mode="database"), name=f"db{i}") for i in range(2)]
        names = [db.database for db in dbs]
        with anyio.fail_after(30):  # the warm pool full and quiet: no CREATE DATABASE in flight
            while not (full := [s for s in await warm_pool_statistics()
                                if s.ready and s.ready >= s.target and s.in_flight == 0]):
                await anyio.sleep(0.01)
        print(json.dumps([names, full[0].ready]), flush=True)
        await anyio.sleep(600)

anyio.run(main)
"""

_STARTER = """
import anyio
from isolated_env import isolated_postgres

async def main():
    async with isolated_postgres(mode="database") as db:
        await db.fetchval("SELECT 1")

anyio.run(main)
"""


async def _start_holder() -> tuple[anyio.abc.Process, list[str], int]:
    proc = await anyio.open_process([sys.executable, "-c", _HOLDER], cwd=REPO)
    assert proc.stdout is not None
    line = b""
    with anyio.fail_after(60):
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive(1)
    names, ready = json.loads(line)
    return proc, names, ready


async def _ours(admin: asyncpg.Connection, pid: int) -> list[str]:
    rows = await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY datname", f"ie\\_db\\_%\\_{pid}\\_%"
    )
    return [r["datname"] for r in rows]


async def test_sigkilled_holder_leaves_no_orphan_after_the_next_start(admin: asyncpg.Connection) -> None:
    victim, leased, ready = await _start_holder()
    survivor, survivor_leased, _ = await _start_holder()
    try:
        held = await _ours(admin, victim.pid)
        assert set(leased) <= set(held) and len(held) == 2 + ready  # 2 leased, the rest ready in the warm pool
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        assert await _ours(admin, victim.pid) == held  # nobody has cleaned up yet

        result = await anyio.run_process([sys.executable, "-c", _STARTER], cwd=REPO, check=False)
        assert result.returncode == 0, result.stderr.decode()

        assert await _ours(admin, victim.pid) == []
        assert set(survivor_leased) <= set(await _ours(admin, survivor.pid))  # a live run's: untouched
        survivor.send_signal(signal.SIGINT)  # an orderly exit drops everything it made
        await survivor.wait()
        assert await _ours(admin, survivor.pid) == []
    finally:
        for proc in (victim, survivor):
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()


async def test_names_carry_run_id_and_pid() -> None:
    from isolated_env._config import run_id

    async with ie.isolated_postgres(mode="database") as db:
        assert db.database.startswith(f"ie_db_{run_id()}_{os.getpid()}_")
        label: Any = json.loads(await db.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()"
        ))
        assert label["pid"] == os.getpid() and label["mode"] == "database"
