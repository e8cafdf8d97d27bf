"""What one "machine" of the fleet simulation runs (tests/fleet/test_fleet.py starts it with pytest
-n 2 inside its own PID and mount namespaces): tests that write their run's mark into a PostgreSQL
database, a transaction, a Redis database and a ClickHouse database, hold them a while, and read the
mark back. Anything
else read back is a cross-run read; a database dropped or flushed under a test fails it. Every
resource used is written to FLEET_LOG (one JSON object a line) for the outer test to check.
"""

from __future__ import annotations

import json
import os
import random
import time

import anyio
import pytest

import isolated_env as ie

MARK = f"{os.environ.get('ISOLATED_ENV_RUN_ID', '?')}/{os.environ.get('PYTEST_XDIST_WORKER', 'w')}/{os.getpid()}"
ROUNDS = int(os.environ.get("FLEET_ROUNDS", "20"))


def _log(**event: object) -> None:
    with open(os.environ["FLEET_LOG"], "a") as f:  # one short write a line: appends do not interleave
        f.write(json.dumps({"mark": MARK, "run": os.environ.get("ISOLATED_ENV_RUN_ID"), **event}) + "\n")


async def _hold() -> None:
    await anyio.sleep(random.uniform(0.02, 0.15))


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_private_database(round_: int) -> None:
    mark = f"{MARK}/{round_}"
    async with ie.isolated_postgres(mode="database") as db:
        _log(kind="pg_db", name=db.database, start=time.time())
        await db.execute("CREATE TABLE mark (v text)")
        await db.execute("INSERT INTO mark VALUES ($1)", mark)
        await _hold()
        seen = [r["v"] for r in await db.fetch("SELECT v FROM mark")]
        assert seen == [mark], f"cross-run read in {db.database}: {seen}"
        _log(kind="pg_db", name=db.database, end=time.time())


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_transaction(round_: int) -> None:
    mark = f"{MARK}/{round_}"
    async with ie.isolated_postgres() as db:
        work = await db.fetchval("SELECT current_database()")
        _log(kind="pg_tx", name=work, start=time.time())
        await db.execute("CREATE TABLE mark (v text)")
        await db.execute("INSERT INTO mark VALUES ($1)", mark)
        await _hold()
        assert [r["v"] for r in await db.fetch("SELECT v FROM mark")] == [mark]
        _log(kind="pg_tx", name=work, end=time.time())


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_redis(round_: int) -> None:
    mark = f"{MARK}/{round_}"
    async with ie.isolated_redis() as r:
        _log(kind="redis", name=r.db, start=time.time())
        assert await r.dbsize() == 0, f"database {r.db} was handed out with keys in it"
        assert await r.set("mark", mark, nx=True)
        await _hold()
        assert await r.get("mark") == mark.encode(), f"database {r.db} was flushed or shared"
        assert await r.dbsize() == 1
        _log(kind="redis", name=r.db, end=time.time())


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_clickhouse(round_: int) -> None:
    mark = f"{MARK}/{round_}"
    async with ie.isolated_clickhouse() as ch:
        _log(kind="ch", name=ch.database, start=time.time())
        await ch.command("CREATE TABLE mark (v String) ENGINE = Memory")
        await ch.insert("mark", [[mark]], column_names=["v"])
        await _hold()
        seen = (await ch.query("SELECT v FROM mark")).result_rows
        assert seen == [(mark,)], f"cross-run read in {ch.database}: {seen}"
        _log(kind="ch", name=ch.database, end=time.time())
