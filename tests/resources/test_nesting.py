"""Nested scopes on real services: a narrower scope starts from the wider one's state and leaves it
as it was, whatever the narrower one did (wrote, failed, was cancelled, committed)."""

from __future__ import annotations

import contextlib

import anyio
import pytest

import isolated_env as ie

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE items (id int PRIMARY KEY, name text)")


async def _seeded(env: ie.Environment, mode: str) -> None:
    db = await env.enter(ie.isolated_postgres(mode=mode, template=SCHEMA))
    r = await env.enter(ie.isolated_redis())
    fs = await env.enter(ie.isolated_fs())
    await db.executemany("INSERT INTO items VALUES ($1, $2)", [(i, f"n{i}") for i in range(50)])
    await r.set("seed", "class")
    await r.set("short", "lived", px=600_000)
    await fs.write_text("seed/a.txt", "class")


async def _outer_state(env: ie.Environment, mode: str) -> tuple[int, list[bytes], list[str]]:
    if mode == "transaction":
        rows = await env["database"].fetchval("SELECT count(*) FROM items")
    else:  # the class's own connection is closed while its database is a template: read it afresh
        import asyncpg

        conn = await asyncpg.connect(env["database"].dsn)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM items")
        finally:
            await conn.close()
    return rows, sorted(await env["redis"].keys()), sorted(env["fs"].listdir())


@pytest.mark.parametrize("mode", ["transaction", "database"])
async def test_each_nested_scope_starts_from_the_outer_state_and_leaves_it_untouched(mode: str) -> None:
    async with ie.Environment() as env:
        await _seeded(env, mode)
        before = await _outer_state(env, mode)
        for n in range(3):
            async with env.nest() as inner:
                db, r, fs = inner["database"], inner["redis"], inner["fs"]
                assert await db.fetchval("SELECT count(*) FROM items") == 50  # the class's rows
                assert await db.fetchval("SELECT count(*) FROM items WHERE id < 0") == 0  # no other test's
                assert await r.get("seed") == b"class" and await r.get("mine") is None
                assert 0 < await r.pttl("short") <= 600_000  # TTLs come along
                assert await fs.read_text("seed/a.txt") == "class" and not fs.exists("mine.txt")
                await db.execute("INSERT INTO items VALUES ($1, 'test')", -1 - n)
                await db.execute("UPDATE items SET name = 'changed' WHERE id = 1")
                with contextlib.suppress(ValueError):
                    async with db.transaction():  # the test's own transaction nests below the scope
                        await db.execute("INSERT INTO items VALUES (-100, 'inner')")
                        raise ValueError
                assert await db.fetchval("SELECT count(*) FROM items") == 51
                await r.set("mine", n)
                await r.delete("seed")
                await fs.write_text("mine.txt", "t")
                (fs.path / "seed" / "a.txt").write_text("changed")
                if mode == "database":
                    assert db.database != env["database"].database
        assert await _outer_state(env, mode) == before
        assert (env["fs"].path / "seed" / "a.txt").read_text() == "class"
        if mode == "transaction":
            assert await env["database"].fetchval("SELECT name FROM items WHERE id = 1") == "n1"


async def test_failure_and_cancellation_inside_a_nested_scope_leave_the_outer_intact() -> None:
    async with ie.Environment() as env:
        await _seeded(env, "transaction")
        before = await _outer_state(env, "transaction")
        with pytest.raises(RuntimeError, match="boom"):
            async with env.nest() as inner:
                await inner["database"].execute("INSERT INTO items VALUES (-1, 'x')")
                await inner["redis"].set("mine", 1)
                raise RuntimeError("boom")
        assert await _outer_state(env, "transaction") == before
        with anyio.move_on_after(0.2) as scope:
            async with env.nest() as inner:
                await inner["database"].execute("INSERT INTO items VALUES (-2, 'x')")
                await inner["database"].execute("SELECT pg_sleep(30)")  # cancelled mid-query
        assert scope.cancelled_caught
        assert await _outer_state(env, "transaction") == before
        with pytest.raises(Exception, match="division by zero"):
            async with env.nest() as inner:  # a failed statement aborts the scope's savepoint only
                await inner["database"].execute("SELECT 1/0")
        async with env.nest() as inner:
            assert await inner["database"].fetchval("SELECT count(*) FROM items") == 50
        assert await _outer_state(env, "transaction") == before


async def test_a_commit_inside_a_nested_scope_is_one_clear_error() -> None:
    with pytest.raises(ie.IsolationBroken) as caught:
        async with ie.Environment() as env:
            db = await env.enter(ie.isolated_postgres(template=SCHEMA))
            await db.execute("INSERT INTO items VALUES (1, 'class')")
            with pytest.raises(ie.IsolationBroken, match="ended the class's transaction"):
                async with env.nest() as inner:
                    await inner["database"].execute("COMMIT")
    assert "escaped isolation" in str(caught.value)  # the class's own exit heals the work database
    async with ie.isolated_postgres(template=SCHEMA) as fresh:
        assert await fresh.fetchval("SELECT count(*) FROM items") == 0


async def test_a_resource_that_cannot_nest_says_so_before_anything_is_entered() -> None:
    async with ie.Environment() as env:
        await env.enter(ie.isolated_redis())
        await env.enter(ie.isolated_ws())
        with pytest.raises(ie.NestingUnsupported, match=r"ws cannot be shared by a wider scope.*isolated_ws"):
            async with env.nest():
                pass
    async with ie.Environment() as env:
        await env.enter(contextlib.nullcontext(1), name="plain")  # type: ignore[arg-type]
        with pytest.raises(ie.NestingUnsupported, match="plain context manager"):
            async with env.nest():
                pass
    with pytest.raises(ie.ConfigError, match="open Environment"):
        async with ie.Environment().nest():
            pass
