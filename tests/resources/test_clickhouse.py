from __future__ import annotations

import datetime as dt
import decimal
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers
from isolated_env.resources._clickhouse_slots import _Slots
from isolated_env.resources.clickhouse import ClickHouseHandle, isolated_clickhouse, prune, settle


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    """A client of the same server, outside any private database (to look at what exists)."""
    server = await servers.ensure_server(resolve())
    client = await clickhouse_connect.get_async_client(**server.client_kwargs())
    try:
        yield client
    finally:
        await client.close()


async def _databases(admin: Any) -> set[str]:
    return {row[0] for row in (await admin.query("SELECT name FROM system.databases")).result_rows}


async def test_private_database_reachable_by_url_and_dropped_on_release(admin: Any) -> None:
    async with isolated_clickhouse() as ch:
        assert isinstance(ch, ClickHouseHandle)
        assert ch.database.startswith(f"ie_{ie._config.run_id()}_")
        await ch.command("CREATE TABLE events (id UInt64, name String) ENGINE = MergeTree ORDER BY id")
        await ch.insert("events", [[1, "a"], [2, "b"]], column_names=["id", "name"])
        assert await ch.command("SELECT count() FROM events") == 2
        assert await ch.client.command("SELECT currentDatabase()") == ch.database
        other = await clickhouse_connect.get_async_client(dsn=ch.url)
        try:
            assert (await other.query("SELECT name FROM events ORDER BY id")).result_rows == [("a",), ("b",)]
        finally:
            await other.close()
        database = ch.database
    await settle()  # the drop runs in the background
    assert database not in await _databases(admin)


async def test_fifty_concurrent_environments_share_nothing(admin: Any) -> None:
    seen: list[str] = []

    async def one(n: int) -> None:
        async with ie.Environment(capacity=50) as env:
            ch = await env.enter(isolated_clickhouse())
            assert env["clickhouse"] is ch
            await ch.command("CREATE TABLE events (n UInt32, tag String) ENGINE = MergeTree ORDER BY n")
            await ch.insert("events", [[n, f"t{n}"], [n + 1000, f"t{n}"]], column_names=["n", "tag"])
            await anyio.sleep(0.05)
            rows = (await ch.query("SELECT n, tag FROM events ORDER BY n")).result_rows
            assert rows == [(n, f"t{n}"), (n + 1000, f"t{n}")]
            seen.append(ch.database)

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(one, n)
    assert len(set(seen)) == 50
    await settle()
    assert not set(seen) & await _databases(admin)


ROUND_TRIP: list[tuple[str, Any]] = [
    ("Int64", -(2**62)),
    ("Float64", 3.25),
    ("String", "héllo\t'quoted'\n"),
    ("Nullable(String)", None),
    ("LowCardinality(String)", "low"),
    ("DateTime64(3, 'Asia/Tokyo')", dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)),
    ("Date", dt.date(2024, 2, 29)),
    ("UUID", uuid.UUID("8f4e1c1e-2a6b-4c55-9d1e-0a1b2c3d4e5f")),
    ("Array(Int32)", [1, -2, 3]),
    ("Map(String, Int64)", {"a": 1, "b": -2}),
    ("Decimal(18, 4)", decimal.Decimal("12345.6789")),
    ("Bool", True),
]


@pytest.mark.parametrize("compress", [False, "lz4", "zstd", "gzip"])
async def test_types_round_trip(compress: str | bool) -> None:
    async with isolated_clickhouse() as ch:
        columns = ", ".join(f"c{i} {t}" for i, (t, _) in enumerate(ROUND_TRIP))
        await ch.command(f"CREATE TABLE t (id UInt8, {columns}) ENGINE = MergeTree ORDER BY id")
        names = ["id"] + [f"c{i}" for i in range(len(ROUND_TRIP))]
        row = [1] + [value for _, value in ROUND_TRIP]
        client = await clickhouse_connect.get_async_client(dsn=ch.url, compress=compress)
        try:
            await client.insert("t", [row, [2] + [value for _, value in ROUND_TRIP]], column_names=names)
            result = await client.query("SELECT * FROM t ORDER BY id")
        finally:
            await client.close()
        assert result.column_names == tuple(names)
        assert result.result_rows[0] == tuple(row)
        assert len(result.result_rows) == 2


async def test_row_binary_and_text_formats() -> None:
    async with isolated_clickhouse() as ch:
        await ch.command("CREATE TABLE t (a Int32, b String) ENGINE = MergeTree ORDER BY a")
        await ch.raw_insert("t", ["a", "b"], insert_block="1,x\n2,y\n", fmt="CSV")
        await ch.command("INSERT INTO t VALUES (3, 'z')")
        raw = await ch.raw_query("SELECT a, b FROM t ORDER BY a", fmt="RowBinaryWithNamesAndTypes")
        assert raw.startswith(b"\x02\x01a\x01b\x05Int32\x06String") and raw.endswith(b"\x01z")
        assert await ch.raw_query("SELECT a FROM t ORDER BY a", fmt="TabSeparated") == b"1\n2\n3\n"
        assert await ch.command("SELECT count() FROM t", settings={"max_threads": 1}) == 3


async def test_settings_and_parameters() -> None:
    async with isolated_clickhouse() as ch:
        assert await ch.command("SELECT getSetting('max_threads')", settings={"max_threads": 3}) == 3
        result = await ch.query(
            "SELECT {s:String} AS s, {n:Int64} + 1 AS n, {a:Array(UInt8)} AS a",
            parameters={"s": "it's \\ a\ttab", "n": 41, "a": [1, 2]},
        )
        assert result.result_rows == [("it's \\ a\ttab", 42, [1, 2])]
        # Client-side binding (%(name)s) works too.
        assert await ch.command("SELECT %(x)s", parameters={"x": "y"}) == "y"


async def test_long_parameters_and_external_data() -> None:
    from clickhouse_connect.driver.external import ExternalData

    async with isolated_clickhouse() as ch:
        ids = list(range(5000))  # long enough that clickhouse-connect sends a multipart form
        assert await ch.command("SELECT length({ids:Array(UInt32)})", parameters={"ids": ids}) == 5000
        external = ExternalData(
            file_name="people.csv", data=b"1,ann\n2,bob\n", fmt="CSV", structure="id UInt8, name String"
        )
        result = await ch.query("SELECT name FROM people ORDER BY id", external_data=external)
        assert result.result_rows == [("ann",), ("bob",)]


async def test_errors_carry_clickhouse_code_and_environment_survives() -> None:
    async with ie.Environment() as env:
        ch = await env.enter(isolated_clickhouse())
        with pytest.raises(DatabaseError) as unknown:
            await ch.query("SELECT * FROM no_such_table")
        assert unknown.value.code == 60 and unknown.value.name == "UNKNOWN_TABLE"
        assert "Code: 60. DB::Exception" in str(unknown.value) and "no_such_table" in str(unknown.value)
        with pytest.raises(DatabaseError) as syntax:
            await ch.command("SELEC 1")
        assert syntax.value.code == 62 and "Syntax error" in str(syntax.value)
        with pytest.raises(DatabaseError) as multi:
            await ch.command("SELECT 1; SELECT 2")
        assert multi.value.code == 62
        with pytest.raises(DatabaseError) as bad_insert:
            await ch.insert("no_such_table", [[1]], column_names=["a"], column_type_names=["Int32"])
        assert bad_insert.value.code == 60
        assert await ch.command("SELECT 1") == 1


async def test_reset_drops_tables_and_keeps_the_database() -> None:
    async with ie.Environment() as env:
        ch = await env.enter(isolated_clickhouse())
        await ch.command("CREATE TABLE t (a Int8) ENGINE = MergeTree ORDER BY a")
        database = ch.database
        await env.reset()
        assert ch.database == database
        assert await ch.command("SELECT count() FROM system.tables WHERE database = currentDatabase()") == 0
        await ch.command("CREATE TABLE t (a Int8) ENGINE = MergeTree ORDER BY a")


async def test_prefix_mode(admin: Any) -> None:
    async with isolated_clickhouse(mode="prefix") as ch:
        assert ch.prefix.startswith("ie_") and ch.table("events") == ch.prefix + "events"
        await ch.command(f"CREATE TABLE {ch.table('events')} (a Int8) ENGINE = MergeTree ORDER BY a")
        await ch.insert(ch.table("events"), [[1]], column_names=["a"])
        assert await ch.command(f"SELECT count() FROM {ch.table('events')}") == 1
        prefix, database = ch.prefix, ch.database
    left = await admin.query(
        "SELECT name FROM system.tables WHERE database = {d:String} AND startsWith(name, {p:String})",
        parameters={"d": database, "p": prefix},
    )
    # Only the owner marker of the slot remains, while the slot waits in the pool for the next test.
    assert [row[0] for row in left.result_rows] == [prefix + "_owner"]


async def test_sync_client_sessions_keep_state() -> None:
    async with isolated_clickhouse() as ch:

        def use() -> tuple[Any, Any, Any]:
            client = clickhouse_connect.get_client(dsn=ch.url)  # the sync client opens a session
            try:
                client.command("SET max_threads = 1")
                client.command("CREATE TEMPORARY TABLE tmp (a Int8)")
                client.command("INSERT INTO tmp VALUES (7)")
                during = client.command("SELECT getSetting('max_threads')", settings={"max_threads": 2})
                after = client.command("SELECT getSetting('max_threads')")
                return after, during, client.command("SELECT a FROM tmp")
            finally:
                client.close()

        assert await anyio.to_thread.run_sync(use) == (1, 2, 7)


async def test_http_interface_details() -> None:
    import httpx

    async with isolated_clickhouse() as ch:
        server = ch.server
        auth = (server.username, server.password)
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/ping")).text == "Ok.\n"
            ok = await http.post(
                "/", params={"query_id": "q-1", "database": ch.database, "default_format": "JSONEachRow"},
                content=b"SELECT currentDatabase() AS d", auth=auth,
            )
            assert ok.status_code == 200 and ok.json() == {"d": ch.database}
            assert ok.headers["x-clickhouse-query-id"] == "q-1"
            assert ok.headers["x-clickhouse-format"] == "JSONEachRow"
            assert "read_rows" in ok.headers["x-clickhouse-summary"]
            for encoding in ("gzip", "deflate", "lz4", "zstd"):
                compressed = await http.post(
                    "/", params={"enable_http_compression": "1"}, content=b"SELECT 'x' FROM numbers(3)",
                    auth=auth, headers={"Accept-Encoding": encoding},
                )
                assert compressed.headers["content-encoding"] == encoding
            import gzip

            body = gzip.compress(b"SELECT 41 + 1")
            unzipped = await http.post("/", content=body, auth=auth, headers={"Content-Encoding": "gzip"})
            assert unzipped.text == "42\n"
            error = await http.post("/", content=b"SELECT * FROM nowhere.nothing", auth=auth)
            assert error.status_code == 404 and error.headers["x-clickhouse-exception-code"] in ("60", "81")
            assert error.text.startswith("Code: ")


async def test_adaptor_requires_the_generated_password() -> None:
    import httpx

    async with isolated_clickhouse() as ch:
        server = ch.server
        if server.source != "embedded":
            pytest.skip("checks the embedded adaptor")
        async with httpx.AsyncClient(base_url=server.url) as http:
            missing = await http.post("/", content=b"SELECT 1")
            assert missing.status_code == 401 and missing.headers["x-clickhouse-exception-code"] == "194"
            wrong = await http.post("/", content=b"SELECT 1", auth=("default", "wrong"))
            assert wrong.status_code == 403 and wrong.headers["x-clickhouse-exception-code"] == "516"
            other_user = await http.post("/", content=b"SELECT 1", auth=("admin", server.password))
            assert other_user.headers["x-clickhouse-exception-code"] == "516"
        with pytest.raises(DatabaseError) as refused:
            await clickhouse_connect.get_async_client(
                host=server.host, port=server.port, username="default", password="wrong"
            )
        assert refused.value.code == 516


async def test_adaptor_listens_on_loopback_only() -> None:
    import psutil

    from isolated_env._servers.chdb.app import Adaptor, EngineError

    async with isolated_clickhouse() as ch:
        server = ch.server
        if server.source != "embedded" or server.pid is None:
            pytest.skip("checks the embedded adaptor")
        # Bound to 127.0.0.1 only: no other interface accepts a connection (we send no traffic to
        # non-loopback addresses to show it; the listening socket says it).
        listening = [c for c in psutil.Process(server.pid).net_connections("inet") if c.status == "LISTEN"]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
    # And the app itself refuses any peer that is not loopback, should it ever be bound elsewhere.
    Adaptor._check_client({"client": ("127.0.0.1", 5000)})
    Adaptor._check_client({"client": ("::1", 5000)})
    with pytest.raises(EngineError) as refused:
        Adaptor._check_client({"client": ("10.1.2.3", 5000)})
    assert refused.value.code == 195


async def test_orphans_of_a_killed_run_are_pruned(admin: Any) -> None:
    script = textwrap.dedent(
        """
        import anyio
        from isolated_env.resources.clickhouse import isolated_clickhouse

        async def main():
            async with isolated_clickhouse() as ch:
                await ch.command("CREATE TABLE t (a Int8) ENGINE = MergeTree ORDER BY a")
                print(ch.database, flush=True)
                await anyio.sleep(120)

        anyio.run(main)
        """
    )
    env = {**os.environ, "ISOLATED_ENV_RUN_ID": "orphan1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)  # noqa: ASYNC220
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        database = line.decode().strip()
        assert database.startswith("ie_orphan1_")
        assert database in await _databases(admin)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    dropped = await prune()
    assert database in dropped
    assert database not in await _databases(admin)


async def test_external_server_is_used_as_is(clean_environ: pytest.MonkeyPatch) -> None:
    async with isolated_clickhouse() as ch:
        embedded = ch.server
    clean_environ.setenv("TEST_CLICKHOUSE_URL", embedded.dsn("default"))
    servers.forget()
    try:
        async with ie.Environment() as env:
            ch = await env.enter(isolated_clickhouse())
            assert ch.server.source == "external" and ch.server.version == embedded.version
            await ch.command("CREATE TABLE t (a Int8) ENGINE = MergeTree ORDER BY a")
            assert ch.database.startswith("ie_")
    finally:
        servers.forget()


async def test_unreachable_external_server_is_reported(clean_environ: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean_environ.setenv("TEST_CLICKHOUSE_URL", f"http://default:x@127.0.0.1:{port}")
    servers.forget()
    try:
        with pytest.raises(ie.ServiceUnavailable) as err:
            await servers.ensure_server(resolve())
        assert "TEST_CLICKHOUSE_URL" in str(err.value) and "x@" not in str(err.value)
    finally:
        servers.forget()


def test_bad_mode_is_a_config_error() -> None:
    async def enter() -> None:
        async with isolated_clickhouse(mode="schema"):  # type: ignore[arg-type]
            pass

    with pytest.raises(ie.ConfigError, match="mode='prefix'"):
        anyio.run(enter)


async def test_keep_on_failure_keeps_the_database_until_pruned(admin: Any) -> None:
    from isolated_env._config import resolve
    from isolated_env.resources.clickhouse import ClickHouseResource

    async with ie.Environment() as env:
        ch = await env.enter(ie.isolated_clickhouse(keep_on_failure=True))
        await ch.command("CREATE TABLE evidence (x Int32) ENGINE = MergeTree ORDER BY x")
        await ch.insert("evidence", [[42]], column_names=["x"])
        env.outcome = ie.Outcome.FAILED
    [kept] = env.kept
    assert kept.kind == "clickhouse" and ch.database in kept.where
    async with ie.isolated_clickhouse() as other:
        assert other.database != ch.database
        rows = (await admin.query(f"SELECT x FROM `{ch.database}`.evidence")).result_rows
        assert rows == [(42,)]
        if other.server.guarded:  # another test's lease may not read it
            with pytest.raises(DatabaseError, match="ACCESS_DENIED"):
                await other.query(f"SELECT x FROM `{ch.database}`.evidence")
        removed = await ClickHouseResource.reap(resolve(), kept=True)
        assert ch.database in removed
        assert ch.database not in await _databases(admin)


async def test_releases_in_a_row_reuse_untouched_databases_after_one_look(admin: Any) -> None:
    # More releases than spares, with no pause for the background worker: the release that finds
    # no spare looks at every returned database at once; the untouched ones come back as spares.
    before = await _databases(admin)
    seen: list[str] = []
    used = ""
    for i in range(30):
        async with isolated_clickhouse() as ch:
            seen.append(ch.database)
            if i == 5:
                await ch.command("CREATE TABLE t (a UInt8) ENGINE = Memory")
                used = ch.database
    await settle()
    assert len(set(seen)) < len(seen)  # databases were handed out again
    assert used not in await _databases(admin)  # the one a test wrote in was dropped, not reused
    mine = f"_{os.getpid()}_"  # another xdist worker's tests make databases on the same server meanwhile
    made = {name for name in (await _databases(admin)) - before if mine in name}
    spares = _Slots.SLOT_SPARES if ch.server.guarded else _Slots.SPARES
    assert len(made) <= 1 + spares, made  # the slot's database and its spares: no growth per release


async def test_an_untouched_database_stays_and_a_used_one_is_replaced(admin: Any) -> None:
    async with isolated_clickhouse() as ch:
        untouched = ch.database
    await settle()
    assert untouched in await _databases(admin)  # nothing was made in it: the slot keeps it
    async with isolated_clickhouse() as ch:
        await ch.command("CREATE TABLE t (a UInt8) ENGINE = Memory")
        used = ch.database
    await settle()
    assert used not in await _databases(admin)
    # A test that dropped its own database leaves the next one a database that exists.
    async with isolated_clickhouse() as ch:
        await ch.command(f"DROP DATABASE {ch.database} SYNC")
    async with isolated_clickhouse() as ch:
        await ch.command("CREATE TABLE t (a UInt8) ENGINE = Memory")
        assert await ch.command("SELECT count() FROM t") == 0
