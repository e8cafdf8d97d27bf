"""The adaptor's idle engine connections: kept per connection string, bounded, and never handed to
another request with anything a request left on them (settings, database, temporary tables)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers
from isolated_env._servers.chdb.conns import Idle, reusable


@pytest.fixture
async def http(clean_environ: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    servers.forget()
    server = await servers.ensure_server(resolve())
    assert server.source == "embedded"
    async with httpx.AsyncClient(base_url=server.url, auth=(server.username, server.password)) as client:
        yield client
    servers.forget()


def test_only_statements_that_leave_a_connection_as_it_was_let_it_serve_again() -> None:
    for sql in ("SELECT 1", " (SELECT 1)", "WITH 1 AS x SELECT x", "INSERT INTO t VALUES (1)",
                "CREATE TABLE t (a Int8) ENGINE = Memory", "DROP TABLE t", "SHOW TABLES", "DESCRIBE t",
                "SELECT 1 SETTINGS max_threads = 1"):
        assert reusable(sql), sql
    for sql in ("SET max_threads = 1", "USE system", "CREATE TEMPORARY TABLE t (a Int8)",
                "DROP TEMPORARY TABLE t", "SET ROLE NONE", "KILL QUERY WHERE 1", "SYSTEM FLUSH LOGS", ""):
        assert not reusable(sql), sql


def test_idle_connections_are_bounded_per_string_and_in_all() -> None:
    closed: list[Any] = []
    idle = Idle(closed.append)
    idle.PER_TARGET, idle.TOTAL = 2, 3
    for conn in ("a1", "a2", "a3"):
        idle.give("a", conn)
    assert closed == ["a3"]  # a string keeps PER_TARGET
    idle.give("b", "b1")
    idle.give("b", "b2")  # four in all: the least recently used string's oldest goes
    assert closed == ["a3", "a1"]
    assert idle.take("b") == "b2" and idle.take("a") == "a2"
    assert idle.take("a") is None and idle.take("c") is None
    idle.clear()
    assert closed == ["a3", "a1", "b1"]


async def test_what_a_request_changes_on_its_connection_stays_with_it(http: httpx.AsyncClient) -> None:
    # Each statement below changes the connection it runs on: no later request may see the change,
    # however many idle connections of the same connection string there are.
    assert (await http.post("/", content=b"SET max_threads = 3")).status_code == 200
    assert (await http.post("/", content=b"USE system")).status_code == 200
    made = await http.post("/", content=b"CREATE TEMPORARY TABLE conns_tmp (a Int8)")
    assert made.status_code == 200, made.text
    for _ in range(20):
        got = await http.post("/", content=b"SELECT getSetting('max_threads') != 3, currentDatabase()")
        assert got.text == "1\tdefault\n", got.text
        missing = await http.post("/", content=b"SELECT a FROM conns_tmp")
        assert missing.headers["x-clickhouse-exception-code"] == "60", missing.text


async def test_a_failed_or_cut_request_leaves_nothing_behind(http: httpx.AsyncClient) -> None:
    failed = await http.post("/", content=b"SELECT throwIf(1)")
    assert failed.status_code != 200
    # A streamed result the client stops reading after its first bytes: its query is cancelled.
    async with http.stream("POST", "/", content=b"SELECT number FROM system.numbers LIMIT 10000000") as streamed:
        async for _ in streamed.aiter_bytes():
            break
    for _ in range(10):
        assert (await http.post("/", content=b"SELECT 1 + 1")).text == "2\n"
    for setting in ("max_threads", "max_block_size"):  # a request's settings ride in its connection string
        got = await http.post("/", params={setting: "7"}, content=f"SELECT getSetting('{setting}')".encode())
        assert got.text == "7\n"
        assert (await http.post("/", content=f"SELECT getSetting('{setting}') = 7".encode())).text == "0\n"
