"""A user's test file, as a type checker sees it: every line here must pass ``mypy --strict``.

Not collected by pytest (its name matches no test pattern); ``tests/test_typing.py`` runs mypy on it.
"""

from __future__ import annotations

import httpx
import redis.asyncio

import isolated_env as ie


async def test_postgres(isolated_database: ie.PostgresHandle) -> None:
    await isolated_database.execute("CREATE TABLE t (x int)")
    await isolated_database.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,)])
    total = await isolated_database.fetchval("SELECT sum(x) FROM t")
    rows = await isolated_database.fetch("SELECT x FROM t WHERE x > $1", 0, timeout=5.0)
    row = await isolated_database.fetchrow("SELECT 1 AS one")
    async with isolated_database.transaction():
        await isolated_database.execute("INSERT INTO t VALUES (3)")
    dsn: str = isolated_database.dsn
    host: str | None = isolated_database.host
    port: int | None = isolated_database.port
    print(total, len(rows), row, dsn, host, port, isolated_database.is_closed())


async def test_a_private_database() -> None:
    async with ie.isolated_postgres(mode="database") as db:
        status: str = await db.execute("SELECT 1")
        print(status, db.dsn, db.mode)


async def test_redis(isolated_redis: ie.RedisHandle) -> None:
    await isolated_redis.set("k", "v", ex=60)
    value = await isolated_redis.get("k")
    await isolated_redis.hset("h", mapping={"a": "1"})
    async with isolated_redis.pipeline(transaction=True) as pipe:
        pipe.incr("n")
        await pipe.execute()
    client: redis.asyncio.Redis = isolated_redis.client
    db: int = isolated_redis.db
    url: str = isolated_redis.url
    host: str | None = isolated_redis.host
    print(value, client, db, url, host, isolated_redis.port)


async def test_clickhouse(isolated_clickhouse: ie.ClickHouseHandle) -> None:
    await isolated_clickhouse.command("CREATE TABLE t (x UInt8) ENGINE = Memory")
    await isolated_clickhouse.insert("t", [[1], [2]], column_names=["x"])
    result = await isolated_clickhouse.query("SELECT sum(x) FROM t")
    print(result.result_rows, isolated_clickhouse.database, isolated_clickhouse.table("events"))


async def test_http(isolated_http: ie.HttpHandle) -> None:
    isolated_http.expect("GET", "/users/1").respond_json({"id": 1})
    response: httpx.Response = await isolated_http.client.get("/users/1")
    isolated_http.check()
    print(response.json(), isolated_http.url_for("/x"))


async def test_ws(isolated_ws: ie.WebSocketHandle) -> None:
    await isolated_ws.send_message({"type": "ping"})
    got = await isolated_ws.expect("ping").wait(timeout=2)
    print(got, isolated_ws.url)


async def test_fs(isolated_fs: ie.FileSystemHandle) -> None:
    print(isolated_fs.path)
