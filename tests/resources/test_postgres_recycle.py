"""Recycling released private databases (resources/postgres/recycle.py), on the real server.

The property: after any sequence of a test's statements, a database is either recycled into exactly
what a fresh clone of its template is (catalogs, rows in their order, sequences, its role's
settings), or refused (then dropped) - and refused whenever the schema, grants, settings, its role,
extensions, large objects or planner statistics were touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isolated_env as ie
from isolated_env._contract import current_settings
from isolated_env._servers.postgres import PostgresServer, ensure_server
from isolated_env.resources.postgres import PostgresTemplate, settle, template_database, warm_pool_statistics
from isolated_env.resources.postgres.labels import CLONE_PREFIX, create_database, disown, drop_database, own
from isolated_env.resources.postgres.labels import drop as labels_drop
from isolated_env.resources.postgres.recycle import Recycler
from isolated_env.resources.postgres.roles import TEST_ROLE, lease_server, lease_sql, rails
from isolated_env.resources.postgres.templates import forget_template

TEMPLATE = PostgresTemplate(name="recycle-property", sql="""
CREATE TABLE parent (id serial PRIMARY KEY, v text NOT NULL, doc jsonb DEFAULT '{}');
INSERT INTO parent (v) SELECT 'p' || g FROM generate_series(1, 20) g;
CREATE TABLE child (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    parent_id int REFERENCES parent ON DELETE CASCADE, n int);
INSERT INTO child (parent_id, n) SELECT g, g * 10 FROM generate_series(1, 20) g;
CREATE TABLE toasty (id serial PRIMARY KEY, body text);
INSERT INTO toasty (body) SELECT string_agg(md5(g::text || x::text), '') FROM generate_series(1, 2) x,
    generate_series(1, 400) g GROUP BY x;
CREATE TABLE audit (at serial, what text);
CREATE TABLE watched (id int);
CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES (TG_OP); RETURN NULL; END $$;
CREATE TRIGGER watched_note AFTER INSERT OR DELETE ON watched FOR EACH ROW EXECUTE FUNCTION note();
INSERT INTO watched VALUES (1), (2);
CREATE TABLE parts (k int, v text) PARTITION BY RANGE (k);
CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100);
CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (100) TO (1000);
INSERT INTO parts SELECT g * 7, 'x' FROM generate_series(1, 30) g;
CREATE TABLE empty_one (x int);
CREATE SEQUENCE counter START 5;
CREATE SEQUENCE used_counter;
SELECT nextval('used_counter');
""")

# What a test may do that recycling puts back: rows and sequences.
DML = st.one_of(
    st.builds(lambda v: f"INSERT INTO parent (v) VALUES ('{v}')", st.integers(0, 99)),
    st.builds(lambda k: f"UPDATE parent SET v = v || '!' WHERE id % {k} = 0", st.integers(1, 7)),
    st.builds(lambda i: f"DELETE FROM parent WHERE id = {i}", st.integers(1, 25)),
    st.builds(lambda i: f"INSERT INTO child (parent_id, n) VALUES ({i}, 1)", st.integers(1, 3)),
    st.builds(lambda n: f"SELECT nextval('counter') FROM generate_series(1, {n})", st.integers(1, 3)),
    st.builds(lambda n: f"SELECT setval('used_counter', {n}, false)", st.integers(1, 50)),
    st.just("UPDATE toasty SET body = body || body WHERE id = 1"),
    st.just("INSERT INTO toasty (body) SELECT repeat(md5('x'), 500)"),
    st.just("INSERT INTO watched VALUES (3)"),
    st.just("DELETE FROM watched"),
    st.builds(lambda k: f"INSERT INTO parts VALUES ({k}, 'y')", st.integers(0, 999)),
    st.just("DELETE FROM parts WHERE k < 50"),
    st.just("INSERT INTO empty_one VALUES (1)"),
    st.just("BEGIN; INSERT INTO parent (v) VALUES ('gone'); ROLLBACK"),
    st.just("SELECT count(*) FROM parent"),
)
# What makes a database not recyclable: schema, grants, comments, statistics, objects, its role.
DDL_TEXTS = [
    "CREATE TABLE made (x int)",
    "ALTER TABLE parent ADD COLUMN extra int",
    "CREATE INDEX ON child (n)",
    "GRANT SELECT ON parent TO PUBLIC",
    "COMMENT ON TABLE parent IS 'mine'",
    "TRUNCATE child",
    "CREATE TEMP TABLE scratch (x int)",
    "ANALYZE parent",
    "ALTER SEQUENCE counter RESTART WITH 100",
    "SELECT lo_create(0)",
    "CREATE VIEW v AS SELECT 1",
    "ALTER TABLE watched DISABLE TRIGGER watched_note",
    "ALTER ROLE CURRENT_USER SET work_mem = '8MB'",
    "DO $$ BEGIN EXECUTE format('ALTER ROLE CURRENT_USER IN DATABASE %I SET work_mem = ''8MB''', "
    "current_database()); END $$",
    "VACUUM parent",
    "EXTENSION",
]
DDL = st.sampled_from(DDL_TEXTS)
STEPS = st.lists(st.tuples(st.booleans(), DML), max_size=8).flatmap(
    lambda dml: st.tuples(st.just([s for _, s in dml]), st.lists(DDL, max_size=1), st.integers(0, 8))
)


@dataclasses.dataclass
class Fixture:
    server: PostgresServer
    admin: Any
    template: str
    recycler: Recycler
    tests: PostgresServer
    grant: str | None
    extension: str
    current: str | None = None


_state: dict[str, Fixture] = {}


@contextlib.asynccontextmanager
async def fixture() -> AsyncIterator[Fixture]:
    """What the tests share, with a superuser connection of this event loop's."""
    f = await _shared()
    f.admin = await asyncpg.connect(f.server.dsn())
    try:
        yield f
    finally:
        await f.admin.close()


async def _shared() -> Fixture:
    if "f" not in _state:
        server = await ensure_server(current_settings())
        guard = await rails(server)
        template = await template_database(server, TEMPLATE)
        admin = await asyncpg.connect(server.dsn())
        extension = await admin.fetchval(
            "SELECT name FROM pg_available_extension_versions WHERE trusted AND NOT installed "
            "AND requires IS NULL AND name NOT LIKE 'plpgsql%' ORDER BY name LIMIT 1"
        )
        await admin.close()
        assert extension, "the server has no trusted extension to create"
        _state["f"] = Fixture(server, admin, template, Recycler(server, template), guard.tests, guard.role, extension)
    return _state["f"]


async def clone(f: Fixture) -> str:
    """A clone as the warm pool makes one: labelled, closed to all but its own login role."""
    name = f"{CLONE_PREFIX}recycle_{uuid.uuid4().hex[:12]}"
    own(name, f.server)
    await create_database(f.admin, f.server, name, f.template, grant=f.grant,
                          then=lease_sql(name, lease_server(f.tests, name)), mode="database", origin=f.template)
    await f.recycler.created(f.admin, name, name)
    return name


async def drop(f: Fixture, name: str) -> None:
    await drop_database(f.admin, name)
    disown(name)
    f.recycler.forget(name)


def login(f: Fixture, name: str) -> PostgresServer:
    made = lease_server(f.tests, name)
    assert made is not None
    return made


def dml_texts(statements: list[str]) -> set[str]:
    return {sql for sql in statements if sql != "EXTENSION" and not any(sql == d for d in DDL_TEXTS)}


async def run_test(f: Fixture, name: str, statements: list[str]) -> None:
    """What a test does: connects as the database's own role and runs ``statements``."""
    conn = await asyncpg.connect(**login(f, name).connect_kwargs(name))
    try:
        for sql in statements:
            if sql == "EXTENSION":
                sql = f'CREATE EXTENSION "{f.extension}"'
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError:  # a failed statement is something tests do too (rows of it stay)
                if sql not in dml_texts(statements):
                    raise
                if conn.is_in_transaction():
                    await conn.execute("ROLLBACK")
    finally:
        await conn.close()


async def dump(f: Fixture, name: str) -> dict[str, Any]:
    """Everything a test could tell two databases apart by: catalogs, rows in heap order, sequences."""
    conn = await asyncpg.connect(f.server.dsn(name))
    try:
        out: dict[str, Any] = {}
        user = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
        out["relations"] = [tuple(r) for r in await conn.fetch(
            "SELECT n.nspname, c.relname, c.relkind, c.relacl::text, c.reltuples, c.relpages, c.relhastriggers, "
            f"obj_description(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {user} "
            "ORDER BY 1, 2")]
        out["columns"] = [tuple(r) for r in await conn.fetch(
            "SELECT c.relname, a.attname, a.atttypid, a.attnum, a.attnotnull, a.attidentity, a.attstattarget, "
            "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
            f"AND d.adnum = a.attnum WHERE {user} AND a.attnum > 0 ORDER BY 1, 4")]
        out["definitions"] = [tuple(r) for r in await conn.fetch(
            "SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE " + user +
            " UNION ALL SELECT 'constraint', conname || pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace "
            "UNION ALL SELECT 'trigger', pg_get_triggerdef(oid) || tgenabled::text FROM pg_trigger "
            "WHERE NOT tgisinternal "
            "UNION ALL SELECT 'function', proname || prosrc || coalesce(proacl::text, '') FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace "
            "UNION ALL SELECT 'extension', extname FROM pg_extension "
            "UNION ALL SELECT 'namespace', nspname || coalesce(nspacl::text, '') FROM pg_namespace "
            "UNION ALL SELECT 'default acl', defaclacl::text FROM pg_default_acl "
            "UNION ALL SELECT 'large objects', count(*)::text FROM pg_largeobject_metadata "
            "UNION ALL SELECT 'statistics', starelid::regclass::text || staattnum FROM pg_statistic "
            "WHERE starelid >= 16384 ORDER BY 1, 2")]
        out["role settings"] = await conn.fetchval(
            "SELECT array_agg(s.setdatabase::text || array_to_string(s.setconfig, ',') ORDER BY 1) "
            "FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1", name)
        own_login = await asyncpg.connect(**login(f, name).connect_kwargs(name))  # its password is its name's
        out["login"] = await own_login.fetchval("SELECT current_user = 'ie_test' AND session_user = current_database()")
        await own_login.close()
        tables = await conn.fetch(f"SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                                  f"ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND {user} ORDER BY 2")
        for t in tables:
            out[f"rows {t['relname']}"] = await conn.fetchval(
                f'SELECT array_agg(row_to_json(t)::text) FROM "{t["nspname"]}"."{t["relname"]}" t')
        for s in await conn.fetch("SELECT relname FROM pg_class WHERE relkind = 'S' ORDER BY 1"):
            out[f"sequence {s['relname']}"] = tuple(await conn.fetchrow(
                f'SELECT last_value, is_called FROM "{s["relname"]}"'))
        return out
    finally:
        await conn.close()


async def recycle(f: Fixture, name: str) -> str | None:
    new = f"{CLONE_PREFIX}recycle_{uuid.uuid4().hex[:12]}"
    own(new, f.server)
    conn = await f.recycler.recycle(f.admin, name, name, login(f, new))
    if conn is not None:
        assert await conn.fetchval("SELECT current_database()") == new
        await conn.close()
        disown(name)
        return new
    await drop_database(f.admin, new)  # renamed before it was refused, or never made
    disown(new)
    return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
async def test_a_recycled_database_equals_a_fresh_clone(steps: tuple[list[str], list[str], int]) -> None:
    dml, ddl, at = steps
    async with fixture() as f:
        await one_example(f, dml, ddl, at)


async def one_example(f: Fixture, dml: list[str], ddl: list[str], at: int) -> None:
    name = f.current or await clone(f)  # a database recycled by earlier examples, or a new clone
    f.current = None
    statements = [*dml[:at], *ddl, *dml[at:]]
    try:
        await run_test(f, name, statements)
        recycled = await recycle(f, name)
    finally:
        await f.admin.execute(f"ALTER ROLE {TEST_ROLE} RESET work_mem")  # the only setting a test can leave
    if ddl:
        assert recycled is None, f"recycled after {ddl}"
        await drop(f, name)
        return
    assert recycled is not None, f"refused after {statements}"
    fresh = await clone(f)
    try:
        assert await dump(f, recycled) == await dump(f, fresh)
    finally:
        await drop(f, fresh)
    f.current = recycled  # the next example writes into it again: recycled again and again


async def test_the_old_name_and_password_reach_nothing_after_a_recycle() -> None:
    async with fixture() as f:
        name = await clone(f)
        await run_test(f, name, ["INSERT INTO parent (v) VALUES ('x')"])
        recycled = await recycle(f, name)
        assert recycled is not None and recycled != name
        try:
            for database in (name, recycled):  # the old role is gone; its password does not open the new
                old = dataclasses.replace(login(f, name), user=name)
                try:
                    await asyncpg.connect(**old.connect_kwargs(database))
                except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError,
                        asyncpg.InvalidCatalogNameError):
                    pass
                else:
                    raise AssertionError(f"the released test's login still reaches {database}")
        finally:
            await drop(f, recycled)


async def test_a_database_with_a_session_left_open_is_not_recycled() -> None:
    async with fixture() as f:
        name = await clone(f)
        leaked = await asyncpg.connect(**login(f, name).connect_kwargs(name))
        try:
            assert await recycle(f, name) is None
        finally:
            leaked.terminate()
            await drop(f, name)


async def test_a_database_never_cloned_by_the_recycler_is_not_recycled() -> None:
    async with fixture() as f:
        name = await clone(f)
        f.recycler.forget(name)  # as a spare of an earlier process: nothing known of it
        assert await recycle(f, name) is None
        await drop(f, name)


async def test_database_mode_hands_out_recycled_databases_and_never_a_dirty_one() -> None:
    tpl = PostgresTemplate(name="recycle-mode", sql="CREATE TABLE t (id serial PRIMARY KEY, v int); "
                                                    "INSERT INTO t (v) VALUES (1), (2);")
    seen: list[str] = []
    for i in range(24):
        async with ie.isolated_postgres(mode="database", template=tpl) as db:
            assert await db.fetchval("SELECT array_agg(v ORDER BY id) FROM t") == [1, 2]
            assert await db.fetchval("SELECT nextval('t_id_seq')") == 3
            assert await db.fetchval("SELECT to_regclass('made')") is None
            assert db.database not in seen
            seen.append(db.database)
            await db.execute("INSERT INTO t (v) VALUES ($1)", i)
            if i % 4 == 3:
                await db.execute("CREATE TABLE made (x int)")
        await anyio.sleep(0.02)
    await settle()
    stats = [s for s in await warm_pool_statistics() if s.template == tpl.database_name]
    assert sum(s.recycled for s in stats) >= 6
    assert all(s.errors == 0 for s in stats)


async def test_clones_of_a_template_dropped_and_built_again_are_not_recycled() -> None:
    tpl = PostgresTemplate(name=f"recycle-rebuilt-{uuid.uuid4().hex[:8]}",
                           sql="CREATE TABLE t (at timestamptz DEFAULT clock_timestamp()); "
                               "INSERT INTO t DEFAULT VALUES;")
    async with fixture() as shared:
        f = dataclasses.replace(shared, template=await template_database(shared.server, tpl))
        f.recycler = Recycler(f.server, f.template)
        old = await clone(f)
        await labels_drop(f.admin, f.template)  # as `isolated-env prune --templates` does
        forget_template(f.server, tpl)
        assert await template_database(f.server, tpl) == f.template  # the same name, other rows
        new = await clone(f)
        try:
            await run_test(f, old, ["INSERT INTO t DEFAULT VALUES"])
            assert await recycle(f, old) is None  # restored from the old rows, it would differ
            await run_test(f, new, ["INSERT INTO t DEFAULT VALUES"])
            recycled = await recycle(f, new)
            assert recycled is not None
            fresh = await clone(f)
            assert await dump(f, recycled) == await dump(f, fresh)
            for name in (recycled, fresh):
                await drop(f, name)
        finally:
            for name in (old, new):
                await drop(f, name)
            await labels_drop(f.admin, f.template)
            forget_template(f.server, tpl)
