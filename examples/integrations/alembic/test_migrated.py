"""Every test starts from the migrated schema, in a private database."""

import psycopg
import pytest
from conftest import SCHEMA

import isolated_env as ie


@pytest.mark.parametrize("n", range(3))
def test_plain_test_gets_the_migrated_schema(isolated_database_dsn, n):
    with psycopg.connect(isolated_database_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
        conn.execute("INSERT INTO users (email) VALUES ('a@example.com')")
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0002",)


async def test_async_test_gets_it_too():
    async with ie.isolated_postgres(mode="database", template=SCHEMA) as db:
        user = await db.fetchval("INSERT INTO users (email) VALUES ('b@example.com') RETURNING id")
        await db.execute("INSERT INTO orders (user_id) VALUES ($1)", user)
        assert await db.fetchval("SELECT count(*) FROM orders") == 1
