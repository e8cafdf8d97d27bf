"""The chdb adaptor as clickhouse-connect sees it: what a real server does, the adaptor does.

Each test is one behaviour clickhouse-connect's own integration suite checks (see
tests/integrations/test_clickhouse_connect_suite.py), here through the async and sync clients.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import pytest

from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers

clickhouse_connect = pytest.importorskip("clickhouse_connect")
from clickhouse_connect.driver.exceptions import DatabaseError, StreamFailureError  # noqa: E402
from clickhouse_connect.driver.summary import QuerySummary  # noqa: E402

LATE_FAILURE = "SELECT sleepEachRow(0.001), throwIf(number = 100) FROM numbers(200)"


@pytest.fixture
async def server(clean_environ: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    servers.forget()
    found = await servers.ensure_server(resolve())
    assert found.source == "embedded"
    yield found
    servers.forget()


@pytest.fixture
async def client(server: Any) -> AsyncIterator[Any]:
    ch = await clickhouse_connect.get_async_client(**server.client_kwargs())
    yield ch
    await ch.close()


@pytest.fixture
async def scratch(client: Any) -> AsyncIterator[str]:
    name = f"fidelity_{uuid.uuid4().hex[:8]}"
    await client.command(f"CREATE DATABASE {name}")
    yield name
    await client.command(f"DROP DATABASE IF EXISTS {name} SYNC")


async def test_statements_without_a_table_return_their_summary(client: Any, scratch: str) -> None:
    created = await client.command(f"CREATE TABLE {scratch}.t (a Int32) ENGINE = Memory")
    assert isinstance(created, QuerySummary) and created.query_id
    assert isinstance(await client.command("SET max_threads = 2"), QuerySummary)
    inserted = await client.command(f"INSERT INTO {scratch}.t SELECT number FROM numbers(3)")
    assert isinstance(inserted, QuerySummary) and inserted.written_rows == 3
    # A statement with a result still answers with it, an empty one too.
    assert await client.command(f"SELECT count() FROM {scratch}.t") == 3
    assert await client.command(f"EXISTS TABLE {scratch}.t") == 1
    assert (await client.query(f"SELECT a FROM {scratch}.t WHERE a > 5")).result_rows == []


async def test_a_late_failure_reaches_the_client_as_a_stream_failure(client: Any) -> None:
    settings = {"max_block_size": 1, "wait_end_of_query": 0}
    with pytest.raises(StreamFailureError, match="Value passed to 'throwIf' function is non-zero"):
        await client.query(LATE_FAILURE, settings=settings)
    with pytest.raises(StreamFailureError, match="throwIf"):
        async with await client.query_rows_stream(LATE_FAILURE, settings=settings) as rows:
            async for _ in rows:
                pass
    assert await client.command("SELECT 1") == 1  # the connection is fine afterwards
    # Waiting for the end of the query turns the same failure into an ordinary error reply.
    with pytest.raises(DatabaseError) as waited:
        await client.query(LATE_FAILURE, settings={"max_block_size": 1, "wait_end_of_query": 1})
    assert not isinstance(waited.value, StreamFailureError) and "throwIf" in str(waited.value)


async def test_a_large_result_streams_whole(client: Any) -> None:
    total, count = 0, 0
    async with await client.query_column_block_stream(
        "SELECT number FROM numbers(3000000)", settings={"max_block_size": 65536}
    ) as blocks:
        async for block in blocks:
            count += len(block[0])
            total += int(sum(block[0]))
    assert count == 3_000_000 and total == 3_000_000 * 2_999_999 // 2


async def test_a_late_failure_through_the_sync_client(server: Any) -> None:
    def run() -> None:
        sync = clickhouse_connect.get_client(**server.client_kwargs())
        try:
            with pytest.raises(StreamFailureError, match="throwIf"):
                _ = sync.query(LATE_FAILURE, settings={"max_block_size": 1, "wait_end_of_query": 0}).result_set
            assert sync.command("SELECT 1") == 1
        finally:
            sync.close()

    await anyio.to_thread.run_sync(run)


async def test_binary_parameters_reach_the_engine_as_bytes(client: Any) -> None:
    csv = await client.raw_query(
        "SELECT col2, col1 FROM format(CSVWithNames, $xx$)", parameters={"$xx$": b"col1,col2\n100,700"}
    )
    assert csv == b"700\t100\n"
    assert await client.command("SELECT hex($b$)", parameters={"$b$": b"\xff\x00\xfe"}) == "FF00FE"


async def test_formats_with_a_header_are_sent_whole(client: Any, scratch: str) -> None:
    # chdb writes each streamed chunk with a fresh writer: a format with a header or a schema
    # must not be streamed, or an Arrow reader stops after the first chunk.
    table = await client.query_arrow("SELECT number FROM numbers(200000)", settings={"max_block_size": 1000})
    assert table.num_rows == 200000
    names = await client.raw_query(
        "SELECT number FROM numbers(3000) FORMAT TSVWithNames", settings={"max_block_size": 100}
    )
    assert names.count(b"number") == 1 and names.count(b"\n") == 3001
    # WITH ... INSERT starts like a query but chdb does not stream it: it runs whole.
    await client.command(f"CREATE TABLE {scratch}.t (a UInt8) ENGINE = Memory")
    await client.query(f"WITH 5 AS y INSERT INTO {scratch}.t SELECT y")
    assert await client.command(f"SELECT sum(a) FROM {scratch}.t") == 5


async def test_access_entities_can_be_listed(client: Any) -> None:
    assert await client.command("SHOW ROW POLICIES") == ""


async def test_a_request_database_does_not_stick_to_the_session(server: Any, scratch: str) -> None:
    client = await clickhouse_connect.get_async_client(**server.client_kwargs(), session_id=str(uuid.uuid4()))
    try:
        client.database = scratch
        assert await client.command("SELECT currentDatabase()") == scratch
        client.database = None
        assert await client.command("SELECT currentDatabase()") == "default"
        # USE inside the session is the session's own choice and does stick.
        await client.command(f"USE {scratch}")
        assert await client.command("SELECT currentDatabase()") == scratch
    finally:
        await client.close()


async def test_queries_are_in_the_query_log(client: Any) -> None:
    marker = f"query_log_{uuid.uuid4().hex[:8]}"
    await client.query(f"SELECT '{marker}'")
    await client.command("SYSTEM FLUSH LOGS")
    logged = await client.command(
        "SELECT count() FROM system.query_log WHERE query LIKE {m:String} AND type = 'QueryFinish'",
        parameters={"m": f"SELECT '{marker}'%"},
    )
    assert logged == 1
