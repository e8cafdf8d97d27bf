"""A report that opens its own asyncpg connection."""

import asyncpg


async def count_users(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM users")
    finally:
        await conn.close()
