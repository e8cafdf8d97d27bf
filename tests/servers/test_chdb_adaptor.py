"""The chdb adaptor, a real server spoken to over HTTP directly (clickhouse-connect's view is in test_clickhouse).

The pieces that need no engine are tested on their own in test_chdb_protocol.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers
from isolated_env._servers.chdb.engine import connection_string


@pytest.fixture
async def http(clean_environ: pytest.MonkeyPatch) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    servers.forget()
    server = await servers.ensure_server(resolve())
    assert server.source == "embedded"
    async with httpx.AsyncClient(base_url=server.url, auth=(server.username, server.password)) as client:
        yield client, server
    servers.forget()


async def test_query_param_and_body_are_joined(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    await client.post("/", content=b"CREATE TABLE IF NOT EXISTS default.adaptor_t (a Int32) ENGINE = Memory")
    try:
        head = {"query": "INSERT INTO default.adaptor_t FORMAT CSV"}
        inserted = await client.post("/", params=head, content=b"1\n2\n")
        assert inserted.status_code == 200, inserted.text
        assert '"written_rows":"2"' in inserted.headers["x-clickhouse-summary"]
        values_head = {"query": "INSERT INTO default.adaptor_t VALUES"}
        values = await client.post("/", params=values_head, content=b"(3)")
        assert values.status_code == 200, values.text
        total = await client.post("/", params={"query": "SELECT sum(a) FROM default.adaptor_t"})
        assert total.text == "6\n"
    finally:
        await client.post("/", content=b"DROP TABLE IF EXISTS default.adaptor_t")


async def test_sessions(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    missing = await client.post("/", params={"session_id": "nope", "session_check": "1"}, content=b"SELECT 1")
    assert missing.headers["x-clickhouse-exception-code"] == "372"
    session = {"session_id": "adaptor-test", "session_timeout": "30"}
    await client.post("/", params=session, content=b"CREATE TEMPORARY TABLE tmp (a Int8)")
    await client.post("/", params=session, content=b"INSERT INTO tmp VALUES (5)")
    assert (await client.post("/", params=session, content=b"SELECT a FROM tmp")).text == "5\n"
    outside = await client.post("/", content=b"SELECT a FROM tmp")
    assert outside.headers["x-clickhouse-exception-code"] == "60"


async def test_http_semantics(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    readonly = await client.get("/", params={"query": "CREATE TABLE default.x (a Int8) ENGINE = Memory"})
    assert readonly.headers["x-clickhouse-exception-code"] == "164"
    unknown = await client.post("/", params={"no_such_setting": "1"}, content=b"SELECT 1")
    assert unknown.status_code == 404 and unknown.headers["x-clickhouse-exception-code"] == "115"
    form = await client.post("/", files={"query": (None, "SELECT {v:String}"), "param_v": (None, "é\\nx")})
    assert form.status_code == 200 and form.text == "é\\nx\n", form.text
    block = await client.post("/", params={"compress": "1"}, content=b"SELECT 1")
    assert block.status_code == 501 and block.headers["x-clickhouse-exception-code"] == "48"
    json_reply = await client.post("/", content=b"SELECT 1 AS x FORMAT JSONEachRow")
    assert json_reply.headers["x-clickhouse-format"] == "JSONEachRow" and json_reply.json() == {"x": 1}
    bound = await client.post("/", params={"param_v": "a\\tb"}, content=b"SELECT {v:String}")
    assert bound.text == "a\\tb\n"
    assert (await client.get("/play")).status_code == 501


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip"])
async def test_a_request_body_of_several_frames(http: tuple[httpx.AsyncClient, Any], encoding: str) -> None:
    # clickhouse-connect compresses each block of an insert separately: one frame per block.
    import lz4.frame
    import zstandard

    compress = {"lz4": lz4.frame.compress, "zstd": zstandard.ZstdCompressor().compress, "gzip": gzip.compress}[encoding]
    client, _ = http
    body = compress(b"SELECT 1") + compress(b" + 2")
    reply = await client.post("/", content=body, headers={"Content-Encoding": encoding})
    assert reply.text == "3\n"


async def test_compressed_replies(http: tuple[httpx.AsyncClient, Any]) -> None:
    import lz4.frame

    client, _ = http
    asked = {"enable_http_compression": "1"}
    packed = await client.post("/", params=asked, headers={"Accept-Encoding": "lz4"}, content=b"SELECT 42")
    assert packed.headers["content-encoding"] == "lz4"
    assert lz4.frame.decompress(packed.content) == b"42\n"
    plain = await client.post("/", headers={"Accept-Encoding": "lz4"}, content=b"SELECT 42")
    assert "content-encoding" not in plain.headers and plain.content == b"42\n"
    bad = {**asked, "http_zlib_compression_level": "fast"}
    refused = await client.post("/", params=bad, headers={"Accept-Encoding": "gzip"}, content=b"SELECT 1")
    said = (refused.status_code, refused.headers, refused.content[:300])
    assert refused.headers.get("x-clickhouse-exception-code") == "36", said


def test_connection_string_carries_only_values_chdb_reads_back_unchanged() -> None:
    target, late = connection_string("/d", {"max_threads": "2", "a": "x+y", "b": "", "c": "x y"}, "db_1")
    assert target == "/d?max_threads=2&database=db_1"
    assert late == {"a": "x+y", "b": "", "c": "x y"}
    assert connection_string("/d", {}, "odd name") == ("/d", {})


async def test_settings_any_value_and_any_database(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    # "+" and ";" cannot ride in a connection string unchanged: they are SET after connecting.
    for name, value in (("format_csv_delimiter", "+"), ("format_csv_delimiter", ";"), ("max_threads", "2")):
        got = await client.post("/", params={name: value}, content=f"SELECT getSetting('{name}')".encode())
        assert got.text == f"{value}\n", got.text
    await client.post("/", content=b"CREATE DATABASE IF NOT EXISTS `adaptor odd-db`")
    try:
        current = await client.post("/", params={"database": "adaptor odd-db"}, content=b"SELECT currentDatabase()")
        assert current.text == "adaptor odd-db\n"
    finally:
        await client.post("/", content=b"DROP DATABASE IF EXISTS `adaptor odd-db`")


async def test_session_settings_last_one_request(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    session = {"session_id": "adaptor-settings", "session_timeout": "30"}
    ask = b"SELECT getSetting('max_threads')"
    await client.post("/", params=session, content=b"SET max_threads = 5")
    assert (await client.post("/", params={**session, "max_threads": "2"}, content=ask)).text == "2\n"
    assert (await client.post("/", params=session, content=ask)).text == "5\n"
    assert (await client.post("/", params={**session, "max_threads": "3"}, content=ask)).text == "3\n"
    assert (await client.post("/", params=session, content=ask)).text == "5\n"


async def test_one_statement_per_request(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    several = await client.post("/", content=b"SELECT 1; SELECT 2")
    assert several.status_code == 400 and several.headers["x-clickhouse-exception-code"] == "62"
    assert "Multi-statements" in several.text
    assert (await client.post("/", content=b"SELECT ';';")).text == ";\n"


async def test_external_data(http: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = http
    session = {"session_id": "adaptor-external"}
    files: dict[str, tuple[str | None, bytes | str]] = {
        "query": (None, "SELECT sum(_1), count() FROM ext"),
        "ext": ("ext.tsv", b"1\n2\n3\n"),
        "ext_types": (None, "Int32"),
    }
    reply = await client.post("/", params=session, files=files)
    assert reply.status_code == 200 and reply.text == "6\t3\n", reply.text
    # A session outlives the request; the request's table does not.
    gone = await client.post("/", params=session, content=b"SELECT 1 FROM ext")
    assert gone.headers["x-clickhouse-exception-code"] == "60"


def test_the_program_keeps_its_command_line() -> None:
    # The contract with _servers/clickhouse.py, which starts it.
    out = subprocess.run(
        [sys.executable, "-m", "isolated_env._servers.chdb", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: python -m isolated_env._servers.chdb ")
    for option in ("--path", "--fd", "--password-file", "--threads"):
        assert option in out
