"""Other ClickHouse clients a user may bring, over HTTP, against a test's private database.

clickhouse-connect's SQLAlchemy dialect (``clickhousedb://``) and aiochclient (on httpx). asynch
speaks only ClickHouse's native TCP protocol, which the chdb adaptor does not serve (see
docs/clickhouse.md), so it has no test here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread
import pytest

from isolated_env.resources.clickhouse import isolated_clickhouse

pytest.importorskip("clickhouse_connect")


async def test_the_sqlalchemy_dialect_reaches_the_private_database() -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from clickhouse_connect.cc_sqlalchemy.ddl.tableengine import MergeTree

    async with isolated_clickhouse() as ch:
        url = "clickhousedb://" + ch.url.split("://", 1)[1]

        def run() -> tuple[list[Any], str]:
            engine = sqlalchemy.create_engine(url)
            try:
                meta = sqlalchemy.MetaData()
                events = sqlalchemy.Table(
                    "events",
                    meta,
                    sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True),
                    sqlalchemy.Column("name", sqlalchemy.String),
                    MergeTree(order_by="id"),
                )
                meta.create_all(engine)
                with engine.begin() as conn:
                    conn.execute(events.insert(), [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}])
                with engine.connect() as conn:
                    rows = list(conn.execute(sqlalchemy.select(events.c.name).order_by(events.c.id)))
                    where = conn.execute(sqlalchemy.text("SELECT currentDatabase()")).scalar_one()
                return [tuple(r) for r in rows], str(where)
            finally:
                engine.dispose()

        rows, where = await anyio.to_thread.run_sync(run)
        assert rows == [("a",), ("b",)] and where == ch.database

        def reflect() -> list[str]:
            engine = sqlalchemy.create_engine(url)
            try:
                return list(sqlalchemy.inspect(engine).get_table_names())
            finally:
                engine.dispose()

        assert await anyio.to_thread.run_sync(reflect) == ["events"]  # the dialect's reflection too


async def test_aiochclient_over_httpx() -> None:
    aiochclient = pytest.importorskip("aiochclient")
    import httpx

    async with isolated_clickhouse() as ch:
        parts = urlsplit(ch.url)  # the test's own user and database
        async with httpx.AsyncClient() as session:
            client = aiochclient.ChClient(
                session,
                url=f"http://{parts.hostname}:{parts.port}",
                user=unquote(parts.username or ""),
                password=unquote(parts.password or ""),
                database=ch.database,
            )
            assert await client.is_alive()
            await client.execute("CREATE TABLE t (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
            await client.execute("INSERT INTO t VALUES", (1, "a"), (2, "b"))
            rows = await client.fetch("SELECT id, name FROM t ORDER BY id")
            assert [(r["id"], r["name"]) for r in rows] == [(1, "a"), (2, "b")]
            assert await client.fetchval("SELECT count() FROM t") == 2
            with pytest.raises(aiochclient.ChClientError, match="UNKNOWN_TABLE"):
                await client.fetch("SELECT * FROM missing")
        assert await ch.command("SELECT count() FROM t") == 2  # the same private database
