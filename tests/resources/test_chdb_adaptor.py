"""The chdb adaptor's HTTP interface, spoken to directly (clickhouse-connect's view is in test_clickhouse)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers
from isolated_env._servers.chdb_adaptor import split_insert


@pytest.fixture
async def http(clean_environ: pytest.MonkeyPatch) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    servers.forget()
    server = await servers.ensure_server(resolve())
    assert server.source == "embedded"
    async with httpx.AsyncClient(base_url=server.url, auth=(server.username, server.password)) as client:
        yield client, server
    servers.forget()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"INSERT INTO t FORMAT Native\n\n\x01", (b"INSERT INTO t ", "Native", b"\n\x01")),
        (b"INSERT INTO t FORMAT Native \r\n \x00", (b"INSERT INTO t ", "Native", b" \x00")),
        (b"insert into `format` (`FORMAT`) format CSV 1", (b"insert into `format` (`FORMAT`) ", "CSV", b"1")),
        (
            b"INSERT /* FORMAT X */ INTO t -- FORMAT Y\nFORMAT TSV\n1",
            (b"INSERT /* FORMAT X */ INTO t -- FORMAT Y\n", "TSV", b"1"),
        ),
        (b"INSERT INTO t VALUES (1, 'FORMAT x')", None),
        (b"INSERT INTO t SELECT 1 FORMAT TSV", None),
        (b"SELECT 1 FORMAT Native", None),
    ],
)
def test_split_insert(text: bytes, expected: tuple[bytes, str, bytes] | None) -> None:
    assert split_insert(text) == expected


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


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip"])
async def test_request_bodies_of_several_frames(http: tuple[httpx.AsyncClient, Any], encoding: str) -> None:
    # clickhouse-connect compresses each block of an insert separately: one frame per block.
    import lz4.frame
    import zstandard

    compress = {
        "lz4": lz4.frame.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "gzip": gzip.compress,
    }[encoding]
    client, _ = http
    body = compress(b"SELECT 1") + compress(b" + 2")
    reply = await client.post("/", content=body, headers={"Content-Encoding": encoding})
    assert reply.text == "3\n"


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
