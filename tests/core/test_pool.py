from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolated_env import LeaseTimeout, Pool, PoolClosed


class Counter:
    def __init__(self, fail_reset_on: set[int] | None = None) -> None:
        self.ids = itertools.count(1)
        self.live: set[int] = set()
        self.destroyed: list[int] = []
        self.fail_reset_on = fail_reset_on or set()
        self.resets = 0

    async def create(self) -> int:
        await anyio.lowlevel.checkpoint()
        item = next(self.ids)
        self.live.add(item)
        return item

    async def reset(self, item: int) -> None:
        self.resets += 1
        if item in self.fail_reset_on:
            raise RuntimeError("dirty")

    async def destroy(self, item: int) -> None:
        self.live.discard(item)
        self.destroyed.append(item)

    def pool(self, capacity: int, lease_timeout: float = 5) -> Pool[int]:
        return Pool("things", create=self.create, reset=self.reset, destroy=self.destroy,
                    capacity=capacity, lease_timeout=lease_timeout)


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(1, 8), tasks=st.integers(1, 40), hold=st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_no_two_leases_share_an_instance_and_capacity_holds(capacity: int, tasks: int, hold: list[int]) -> None:
    async def main() -> None:
        c = Counter()
        pool = c.pool(capacity)
        in_use: set[int] = set()
        peak = 0

        async def worker(n: int) -> None:
            nonlocal peak
            async with pool.lease() as lease:
                assert lease.value not in in_use
                in_use.add(lease.value)
                peak = max(peak, len(in_use))
                for _ in range(hold[n % len(hold)]):
                    await anyio.lowlevel.checkpoint()
                in_use.remove(lease.value)

        async with anyio.create_task_group() as tg:
            for n in range(tasks):
                tg.start_soon(worker, n)
        stats = pool.statistics()
        assert peak <= capacity and stats.max_concurrent <= capacity
        assert stats.created <= capacity
        assert stats.created + stats.reused == tasks
        assert stats.leased == 0
        await pool.aclose()
        assert c.live == set()

    anyio.run(main)


async def test_failed_reset_destroys_the_instance() -> None:
    c = Counter(fail_reset_on={1})
    pool = c.pool(1)
    async with pool.lease() as lease:
        assert lease.value == 1
    async with pool.lease() as lease:
        assert lease.value == 2  # 1 was dirty, so it was destroyed, never handed out again
    assert c.destroyed == [1]
    stats = pool.statistics()
    assert stats.reset_failures == 1 and len(pool.errors) == 1
    await pool.aclose()


@pytest.mark.parametrize("reuse_oldest", [False, True])
async def test_the_idle_instance_handed_out_is_the_last_released_or_the_first(reuse_oldest: bool) -> None:
    c = Counter()
    pool = Pool("things", create=c.create, reset=c.reset, destroy=c.destroy, capacity=3, lease_timeout=5,
                reuse_oldest=reuse_oldest)
    async with pool.lease() as first, pool.lease() as second:
        assert (first.value, second.value) == (1, 2)
    # Released in reverse order of leasing (the inner lease first): 2, then 1.
    async with pool.lease() as again:
        assert again.value == (2 if reuse_oldest else 1)
    await pool.aclose()


async def test_discarded_lease_is_destroyed() -> None:
    c = Counter()
    pool = c.pool(2)
    async with pool.lease() as lease:
        lease.discard()
    assert c.destroyed == [1] and pool.statistics().idle == 0
    await pool.aclose()


async def test_exhausted_capacity_waits_then_times_out() -> None:
    c = Counter()
    pool = c.pool(1, lease_timeout=0.05)
    async with pool.lease():
        with pytest.raises(LeaseTimeout, match="all 1 are leased") as info:
            async with pool.lease():
                pass
        assert isinstance(info.value, TimeoutError)
    async with pool.lease() as lease:  # free again
        assert lease.value == 1
    assert pool.statistics().waits == 1
    await pool.aclose()


async def test_cancel_while_waiting_or_holding_leaves_nothing_leased() -> None:
    c = Counter()
    pool = c.pool(1)
    entered = anyio.Event()

    async def holder() -> None:
        async with pool.lease():
            entered.set()
            await anyio.sleep_forever()

    async def waiter() -> None:
        async with pool.lease():
            raise AssertionError("should never get the slot")

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await entered.wait()
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    stats = pool.statistics()
    assert stats.leased == 0 and stats.idle == 1
    async with pool.lease() as lease:
        assert lease.value == 1
    await pool.aclose()
    assert c.live == set()


async def test_closed_pool_refuses_and_destroys_returns() -> None:
    c = Counter()
    pool = c.pool(2)
    async with pool.lease():
        await pool.aclose()
    assert c.live == set()
    with pytest.raises(PoolClosed):
        async with pool.lease():
            pass


async def test_statistics_hit_ratio() -> None:
    c = Counter()
    pool = c.pool(3)
    for _ in range(10):
        async with pool.lease():
            pass
    stats = pool.statistics()
    assert (stats.created, stats.reused, stats.leases) == (1, 9, 10)
    assert stats.hit_ratio == pytest.approx(0.9)
    await pool.aclose()


async def test_a_long_wait_for_capacity_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def create() -> int:
        return 1

    async def destroy(item: int) -> None:
        pass

    pool: Pool[int] = Pool("slow things", create=create, destroy=destroy, capacity=1, lease_timeout=10)
    caplog.set_level("INFO", logger="isolated_env")

    async def hold() -> None:
        async with pool.lease():
            await anyio.sleep(1.2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.sleep(0.05)
        async with pool.lease():
            pass
    assert "for a lease of slow things (capacity 1, all leased)" in caplog.text


async def test_a_create_past_the_lease_timeout_is_a_lease_timeout_and_its_own_timeout_is_not() -> None:
    async def slow() -> int:
        await anyio.sleep(10)
        return 1

    async def own_timeout() -> int:
        raise TimeoutError("connect timed out")  # a driver's: not the pool's bound

    async def destroy(item: int) -> None:
        pass

    pool = Pool("slow things", create=slow, destroy=destroy, capacity=2, lease_timeout=0.05)
    with pytest.raises(LeaseTimeout, match=r"making a new slow things took longer than the lease timeout \(0.05 s\)"):
        await pool.acquire()
    assert pool.statistics().leased == 0
    pool = Pool("things", create=own_timeout, destroy=destroy, capacity=1, lease_timeout=5)
    with pytest.raises(TimeoutError, match="connect timed out") as info:
        await pool.acquire()
    assert not isinstance(info.value, LeaseTimeout)
