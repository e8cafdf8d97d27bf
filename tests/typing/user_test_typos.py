"""A user's test file with typos: ``mypy --strict`` must reject exactly the lines marked ``# E``.

Not collected by pytest; ``tests/test_typing.py`` runs mypy on it and compares the lines it rejects.
"""

from __future__ import annotations

import isolated_env as ie


async def test_postgres(isolated_database: ie.PostgresHandle) -> None:
    await isolated_database.fetchvall("SELECT 1")  # E: attr-defined
    await isolated_database.execute(1)  # E: arg-type
    await isolated_database.fetch("SELECT 1", timeout="soon")  # E: arg-type
    print(isolated_database.dns)  # E: attr-defined


async def test_redis(isolated_redis: ie.RedisHandle) -> None:
    await isolated_redis.sett("k", "v")  # E: attr-defined
    await isolated_redis.set("k", "v", ex=[60])  # E: arg-type
    print(isolated_redis.uri)  # E: attr-defined


async def test_clickhouse(isolated_clickhouse: ie.ClickHouseHandle) -> None:
    await isolated_clickhouse.querry("SELECT 1")  # E: attr-defined
    await isolated_clickhouse.query("SELECT 1", settings=["max_threads"])  # E: arg-type


async def test_http(isolated_http: ie.HttpHandle) -> None:
    isolated_http.expect("GET", "/").respond_jsonn({})  # E: attr-defined
    await isolated_http.client.gett("/")  # E: attr-defined


async def test_ws(isolated_ws: ie.WebSocketHandle) -> None:
    await isolated_ws.send_mesage({"type": "ping"})  # E: attr-defined
