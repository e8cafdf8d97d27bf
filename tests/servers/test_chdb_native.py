"""Native output for a client protocol revision (:mod:`isolated_env._servers.chdb.native`).

The block walker is checked on Native bytes the engine itself wrote; the revision handling through
a real adaptor and clickhouse-connect, which negotiates revision 54405 when the server honours it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from isolated_env._config import resolve
from isolated_env._servers import clickhouse as servers
from isolated_env._servers.chdb import native

clickhouse_connect = pytest.importorskip("clickhouse_connect")
chdb = pytest.importorskip("chdb")

_REVISION = {"client_protocol_version": 54405}


def _engine_native(sql: str) -> bytes:
    conn = chdb.connect(":memory:")
    try:
        return bytes(conn.query(sql, "Native").bytes())
    finally:
        conn.close()


def test_blocks_of_a_whole_result_are_found() -> None:
    body = _engine_native(
        "SELECT number AS n, toString(number) AS s, [number, 1] AS a, toNullable(toString(number)) AS ns, "
        "map('k', number) AS m, (number, 'x') AS t, toDecimal64(number, 2) AS d, toFixedString('ab', 2) AS f "
        "FROM numbers(2500) SETTINGS max_block_size = 1000"
    )
    blocks = native.split_blocks(body)
    assert blocks is not None and len(blocks) == 3
    assert b"".join(blocks) == body
    assert [block[1:3] for block in blocks] == [b"\xe8\x07", b"\xe8\x07", b"\xf4\x03"]  # 1000, 1000, 500 rows


def test_a_type_without_a_known_layout_is_not_guessed() -> None:
    assert native.split_blocks(_engine_native("SELECT toLowCardinality(toString(number)) FROM numbers(3)")) is None
    assert native.with_block_info(b"\x01\x01\x01x\x05UInt8\x07") == native.BLOCK_INFO + b"\x01\x01\x01x\x05UInt8\x07"


def test_the_header_block_declares_the_zone() -> None:
    described = b'{"name":"dt","type":"DateTime(\'Asia/Tokyo\')"}\n{"name":"n","type":"UInt8"}\n'
    header = native.zone_header(described)
    assert header == native.BLOCK_INFO + b"\x02\x00\x02dt\x16DateTime('Asia/Tokyo')\x01n\x05UInt8"
    assert native.zone_header(b'{"name":"dt","type":"DateTime"}\n') == b""
    assert native.describe_query("SELECT 1 AS x\n FORMAT Native;") == "DESCRIBE (SELECT 1 AS x)"


@pytest.fixture
async def client(clean_environ: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    servers.forget()
    server = await servers.ensure_server(resolve())
    ch = await clickhouse_connect.get_async_client(**server.client_kwargs())
    yield ch
    await ch.close()
    servers.forget()


async def test_the_client_negotiates_a_revision_and_keeps_zones(client: Any) -> None:
    assert client.protocol_version == 54405
    row = (
        await client.query("SELECT toDateTime('2022-10-25 10:55:22', 'America/Chicago') AS c, toDateTime(0) AS u")
    ).first_row
    assert str(row[0].tzinfo) == "America/Chicago"
    sql = "SELECT toDateTime(1676369730, 'Asia/Shanghai') AS dt FORMAT Native"
    plain = await client.raw_query(sql)
    assert plain.hex() == "0101026474084461746554696d65425feb63"  # revision 0: as the engine writes it
    zoned = await client.raw_query(sql, settings={"client_protocol_version": 54337})
    assert zoned[:8] == native.BLOCK_INFO and zoned[14:39] == b"DateTime('Asia/Shanghai')"


async def test_every_block_has_its_block_info(client: Any) -> None:
    sql = "SELECT number, toString(number) AS s FROM numbers(5000) FORMAT Native"
    for wait_end in ("0", "1"):
        raw = await client.raw_query(sql, settings={**_REVISION, "max_block_size": 1000, "wait_end_of_query": wait_end})
        assert raw.count(native.BLOCK_INFO + b"\x02\xe8\x07") == 5, wait_end
    result = await client.query("SELECT number, toString(number) FROM numbers(5000)", settings={"max_block_size": 700})
    assert len(result.result_rows) == 5000 and result.result_rows[-1] == (4999, "4999")
    # A statement chdb does not stream comes whole, cut into its blocks.
    assert ("system",) in (await client.query("SHOW DATABASES")).result_rows


def test_a_revision_that_is_not_a_number_is_refused() -> None:
    from isolated_env._servers.chdb.protocol import EngineError, decode_request

    assert decode_request("POST", {}, {"client_protocol_version": "54405"}, b"SELECT 1").protocol == 54405
    with pytest.raises(EngineError, match="client_protocol_version must be a revision number") as err:
        decode_request("POST", {}, {"client_protocol_version": "new"}, b"SELECT 1")
    assert err.value.code == 36
