"""Finding 4: an escaped COMMIT is healed in place, so a ``.dsn`` kept by the tests stays valid;
and a transaction-mode work database dropped from outside is re-created."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

import isolated_env as ie
from isolated_env._contract import current_settings
from isolated_env._servers.postgres import ensure_server

SEEDED = ie.PostgresTemplate(name="heal", sql="CREATE TABLE items (x int); INSERT INTO items VALUES (1), (2)")


async def test_a_kept_dsn_survives_an_escaped_commit_and_sees_the_template_again() -> None:
    async with ie.isolated_postgres(template=SEEDED) as db:
        kept_dsn = db.dsn  # what an app engine made once per session holds on to
        name = db.database
    with pytest.raises(ie.IsolationBroken, match="under the same name") as info:
        async with ie.isolated_postgres(template=SEEDED) as db:
            await db.execute("INSERT INTO items VALUES (3); CREATE TABLE stray (x int); COMMIT")
    assert isinstance(info.value, AssertionError)  # the escaping test still fails
    async with ie.isolated_postgres(template=SEEDED) as db:
        assert db.dsn == kept_dsn and db.database == name
        other = await asyncpg.connect(kept_dsn)  # the kept DSN still names a database that exists
        try:
            assert await other.fetchval("SELECT count(*) FROM items") == 2  # the template's rows, no more
            assert await other.fetchval("SELECT to_regclass('stray')") is None
        finally:
            await other.close()
        assert await db.fetchval("SELECT count(*) FROM items") == 2


async def test_a_work_database_dropped_from_outside_is_recreated() -> None:
    template = ie.PostgresTemplate(name="dropped", sql="CREATE TABLE items (x int)", version=uuid.uuid4().hex)
    async with ie.isolated_postgres(template=template) as db:
        name, dsn = db.database, db.dsn
    server = await ensure_server(current_settings())
    admin = await asyncpg.connect(**server.connect_kwargs())
    try:
        # the pool's idle session is ended with it
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        for _ in range(3):
            async with ie.isolated_postgres(template=template) as db:
                assert db.database == name and db.dsn == dsn
                assert await db.fetchval("SELECT count(*) FROM items") == 0
        assert await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) == 1
    finally:
        await admin.close()
