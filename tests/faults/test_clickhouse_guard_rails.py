"""ClickHouse guard rails: a test's lease user reaches its own database only (the chdb adaptor)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

import isolated_env as ie
from isolated_env._servers.chdb.guard import check
from isolated_env._servers.chdb.protocol import EngineError, user_password
from isolated_env.resources.clickhouse import ClickHouseHandle

USER = "ie_abc123_42_s7"
OWN = USER + "_9"


def _known() -> frozenset[str]:
    return frozenset({"default", "system", OWN, "ie_abc123_42_s8_3", "app"})


@pytest.fixture
async def pair() -> AsyncIterator[tuple[ClickHouseHandle, ClickHouseHandle]]:
    async with ie.isolated_clickhouse() as a, ie.isolated_clickhouse() as b:
        if not a.server.guarded:
            pytest.skip("the ClickHouse server has no guard rails (an external server: see docs/reliability.md)")
        await b.command("CREATE TABLE secret (x Int32) ENGINE = MergeTree ORDER BY x")
        await b.insert("secret", [[7]], column_names=["x"])
        yield a, b
        assert (await b.query("SELECT x FROM secret")).result_rows == [(7,)]


def harmful(other: str) -> list[str]:
    return [
        f"SELECT * FROM {other}.secret", f"SELECT * FROM `{other}`.`secret`", f'SELECT * FROM "{other}".secret',
        f"INSERT INTO {other}.secret VALUES (1)", f"DROP DATABASE {other}", f"DROP DATABASE IF EXISTS {other}",
        f"DROP TABLE {other}.secret", f"TRUNCATE TABLE {other}.secret", f"ALTER TABLE {other}.secret DELETE WHERE 1",
        f"USE {other}", f"SHOW TABLES FROM {other}", f"SHOW CREATE DATABASE {other}", f"DETACH DATABASE {other}",
        f"RENAME TABLE {other}.secret TO stolen", f"CREATE TABLE copy AS {other}.secret",
        f"CREATE TABLE copy ENGINE = Memory AS SELECT * FROM {other}.secret",
        f"EXCHANGE TABLES secret AND {other}.secret", f"OPTIMIZE TABLE {other}.secret",
        f"SELECT * FROM system.tables WHERE database = '{other}' UNION ALL SELECT * FROM {other}.secret",
        "SELECT * FROM merge('.*', '.*')", f"SELECT * FROM remote('127.0.0.1', {other}.secret)",
        "SELECT * FROM cluster('default', system.one)", "CREATE TABLE m (x Int32) ENGINE = Merge(REGEXP('.*'), '.*')",
        f"CREATE TABLE buf (x Int32) ENGINE = Buffer({other}, secret, 1, 1, 1, 1, 1, 1, 1)",
        f"SELECT dictGet('{other}.d', 'x', 1)", "SELECT * FROM default.anything",
        "SELECT * FROM system.processes", "SELECT * FROM system.query_log", "SELECT * FROM information_schema.tables",
        "SELECT * FROM INFORMATION_SCHEMA.COLUMNS", "CREATE DATABASE mine", "RENAME DATABASE a TO b",
        "SYSTEM DROP MARK CACHE", "KILL QUERY WHERE 1", "CREATE USER intruder", "GRANT ALL ON *.* TO intruder",
        "SHOW DATABASES LIKE '%'",
    ]


async def test_each_harmful_statement_is_refused_with_a_clear_error(
    pair: tuple[ClickHouseHandle, ClickHouseHandle],
) -> None:
    a, b = pair
    for sql in harmful(b.database):
        with pytest.raises(DatabaseError, match="ACCESS_DENIED") as caught:
            await a.command(sql)
        assert "guard rails" in str(caught.value), sql
    await a.command("CREATE TABLE mine (x Int32) ENGINE = Memory")  # its own database still works
    await a.command(f"INSERT INTO `{a.database}`.mine VALUES (1)")
    assert await a.command("SELECT count() FROM mine") == 1


async def test_system_tables_show_the_own_database_only(pair: tuple[ClickHouseHandle, ClickHouseHandle]) -> None:
    a, b = pair
    await a.command("CREATE TABLE mine (x Int32) ENGINE = Memory")
    assert (await a.query("SELECT database, name FROM system.tables")).result_rows == [(a.database, "mine")]
    assert (await a.query("SELECT DISTINCT database FROM system.columns")).result_rows == [(a.database,)]
    assert (await a.query("SELECT name FROM system.databases")).result_rows == [(a.database,)]
    assert (await a.query("SHOW DATABASES")).result_rows == [(a.database,)]
    assert (await a.query("SHOW TABLES")).result_rows == [("mine",)]
    assert await a.command("SELECT count() FROM system.tables t WHERE t.database = currentDatabase()") == 1
    assert await a.command("SELECT count() FROM (SELECT number FROM system.numbers LIMIT 3)") == 3
    assert await b.command("SELECT count() FROM system.tables") == 1  # b sees its own table only


async def test_the_url_is_the_lease_user_on_the_own_database(pair: tuple[ClickHouseHandle, ClickHouseHandle]) -> None:
    a, b = pair
    other = await clickhouse_connect.get_async_client(dsn=a.url)
    try:
        assert await other.command("SELECT currentDatabase()") == a.database
        with pytest.raises(DatabaseError, match="ACCESS_DENIED"):
            await other.command(f"SELECT * FROM {b.database}.secret")
    finally:
        await other.close()
    with pytest.raises(DatabaseError, match="ACCESS_DENIED"):  # its user, b's database: refused at connect
        stray = await clickhouse_connect.get_async_client(dsn=a.url.rsplit("/", 1)[0] + "/" + b.database)
        await stray.close()


async def test_lease_users_need_the_derived_password(pair: tuple[ClickHouseHandle, ClickHouseHandle]) -> None:
    a, _ = pair
    server = a.server
    user = a.url.split("//", 1)[1].split(":", 1)[0]
    forged = ("ie_made_1_s1", user_password("not the server's secret", "ie_made_1_s1"))
    for name, password in ((user, "wrong"), ("ie_made_1_s1", "anything"), forged):
        with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
            await clickhouse_connect.get_async_client(
                host=server.host, port=server.port, username=name, password=password, database=a.database
            )


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT t.x FROM t AS t", None),
        (f"SELECT x FROM {OWN}.t", None),
        (f"SELECT x FROM `{OWN}`.t JOIN t2 USING (x)", None),
        ("SELECT version(), timezone()", None),
        ("SELECT 'ie_abc123_42_s8_3.t'", None),  # a string is data, not a reference
        ("SHOW COLUMNS FROM t", None),
        ("SHOW TABLES", None),
        (f"USE {OWN}", None),
        (f"DROP DATABASE IF EXISTS {OWN}", None),
        ("INSERT INTO t", None),
        ("SELECT tup.1, js.a.b FROM t", None),
        ("SELECT name FROM system.tables WHERE engine = 'Memory'",
         f"SELECT name FROM (SELECT * FROM system.tables WHERE database = '{OWN}') WHERE engine = 'Memory'"),
        ("SHOW DATABASES FORMAT JSON", f"SELECT name FROM system.databases WHERE name = '{OWN}' FORMAT JSON"),
    ],
)
def test_check_passes_or_rewrites_what_stays_in_the_own_database(sql: str, expected: str | None) -> None:
    assert check(USER, OWN, sql, _known) == (expected or sql)


@pytest.mark.parametrize(
    ("database", "sql", "message"),
    [
        (OWN, "SELECT * FROM ie_abc123_42_s8_3.t", "not this test's database"),
        (OWN, "SELECT * FROM app.t", "not this test's database"),  # a database that exists
        (OWN, "SHOW COLUMNS FROM t FROM app", "not this test's database"),
        (OWN, "SELECT * FROM system.query_log", "system.query_log is refused"),
        ("ie_abc123_42_s8_3", "SELECT 1", "is not this user's"),
        ("app", "SELECT 1", "is not this user's"),
        (None, "CREATE TABLE t (x Int8) ENGINE = Memory", "without a database"),
        (None, "SELECT * FROM t", "without a database"),
        (None, "SELECT * FROM system.tables", "without a database"),
    ],
)
def test_check_refuses_what_leaves_the_own_database(database: str | None, sql: str, message: str) -> None:
    with pytest.raises(EngineError, match=message) as caught:
        check(USER, database, sql, _known)
    assert caught.value.code == 497


def test_without_a_database_only_tableless_selects_pass() -> None:
    for sql in ("SELECT version(), timezone()", "SELECT * FROM system.one", "SELECT * FROM numbers(3)"):
        assert check(USER, None, sql, _known) == sql
