"""The database-mode warm pool sizes itself to observed demand (:mod:`isolated_env._demand`), on
the real server: a burst of concurrent leases raises its target, and the next burst of that size
finds its clones ready."""

from __future__ import annotations

import anyio

import isolated_env as ie
from isolated_env._demand import warm_bounds
from isolated_env.resources.postgres import WarmPoolStatistics, warm_pool_statistics

TEMPLATE = ie.PostgresTemplate(name="warm_demand", sql="CREATE TABLE d (id int)")
CAPACITY = 10
BURST = 6


async def ours() -> WarmPoolStatistics:
    [stats] = [s for s in await warm_pool_statistics()
               if s.template == TEMPLATE.database_name and s.capacity == CAPACITY]
    return stats


async def burst() -> None:
    async def one(env: ie.Environment) -> None:
        db = await env.enter(ie.isolated_postgres(mode="database", template=TEMPLATE), name=f"db{id(object())}")
        assert await db.fetchval("SELECT count(*) FROM d") == 0

    async with ie.Environment(capacity=CAPACITY) as env:
        async with anyio.create_task_group() as tg:
            for _ in range(BURST):
                tg.start_soon(one, env)


async def test_a_burst_raises_the_target_and_the_next_burst_finds_clones_ready() -> None:
    lo, hi = warm_bounds(CAPACITY)
    assert lo < BURST <= hi
    await burst()
    first = await ours()
    assert first.starved >= BURST - lo  # a new pool: the burst outran its low bound
    assert first.target >= BURST  # six leases in one refill time (and some of them waited)
    with anyio.fail_after(60):
        while (await ours()).ready < BURST:  # noqa: ASYNC110 (background refill sets no event here)
            await anyio.sleep(0.01)
    await burst()
    second = await ours()
    assert second.starved == first.starved  # all six were ready
    assert second.peak_ready >= BURST and second.errors == 0
