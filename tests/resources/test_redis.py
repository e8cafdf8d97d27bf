from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable

import anyio
import pytest
import redis.asyncio as aredis

import isolated_env as ie


async def test_keys_are_private_and_flushed_on_release() -> None:
    async with ie.isolated_redis() as r:
        await r.set("user:1", "alice", ex=60)
        assert await r.get("user:1") == b"alice"
        assert await r.ttl("user:1") > 0
        url, db = r.url, r.db
        other = aredis.Redis.from_url(url)
        try:
            assert await other.get("user:1") == b"alice"  # .url reaches the same database
        finally:
            await other.aclose()
    check = aredis.Redis.from_url(url)
    try:
        assert await check.dbsize() == 0
    finally:
        await check.aclose()
    assert db >= 1  # database 0 holds the leases


async def test_concurrent_tests_get_distinct_databases() -> None:
    dbs: list[int] = []

    async def one(n: int) -> None:
        async with ie.Environment(capacity=50) as env:
            r = await env.enter(ie.isolated_redis())
            await r.set("n", n)
            dbs.append(r.db)
            await anyio.sleep(0.01)
            assert int(await r.get("n")) == n and await r.dbsize() == 1

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(one, n)
    assert len(dbs) == 50 and len(set(dbs)) == 50


async def test_reset_flushes() -> None:
    async with ie.Environment() as env:
        r = await env.enter(ie.isolated_redis())
        await r.set("a", 1)
        await env.reset()
        assert await r.dbsize() == 0


@pytest.fixture
def small_redis(redis_process: tuple[str, subprocess.Popen[bytes]]) -> str:
    """A real server with the stock 16 databases on TCP, like a managed or shared one."""
    return redis_process[0]


async def test_server_with_16_databases_waits_instead_of_colliding(
    clean_environ: pytest.MonkeyPatch, small_redis: str
) -> None:
    clean_environ.setenv("TEST_REDIS_URL", small_redis)
    holders: dict[int, int] = {}
    peak = 0

    async def one(n: int) -> None:
        nonlocal peak
        async with ie.Environment(capacity=40) as env:
            r = await env.enter(ie.isolated_redis())
            assert r.server.source == "external" and r.server.databases == 16
            assert r.db not in holders, "two tests got the same database"
            holders[r.db] = n
            peak = max(peak, len(holders))
            await r.set("n", n)
            await anyio.sleep(0.005)
            assert int(await r.get("n")) == n
            del holders[r.db]
            done.append(n)

    done: list[int] = []
    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(one, n)
    # The invariant, not the schedule: never more than the 15 leasable databases at once, and
    # every test got one in the end.
    assert 1 <= peak <= 15
    assert sorted(done) == list(range(40))


_WORKER = textwrap.dedent(
    """
    import json, sys, time, anyio, isolated_env as ie

    async def main():
        out = []
        async def one():
            async with ie.Environment(capacity=10) as env:
                r = await env.enter(ie.isolated_redis())
                start = time.time()
                await r.set("owner", sys.argv[1])
                await anyio.sleep(0.2)
                assert (await r.get("owner")).decode() == sys.argv[1]
                out.append((r.db, start, time.time()))
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        print(json.dumps(out))

    anyio.run(main)
    """
)


async def test_two_processes_never_hold_the_same_database(
    clean_environ: pytest.MonkeyPatch, small_redis: str
) -> None:
    env = {**os.environ, "TEST_REDIS_URL": small_redis}

    async def run(tag: str) -> list[tuple[int, float, float]]:
        result = await anyio.run_process([sys.executable, "-c", _WORKER, tag], env=env, check=False)
        assert result.returncode == 0, result.stderr.decode()
        return [tuple(x) for x in json.loads(result.stdout)]  # type: ignore[misc]

    results: dict[str, list[tuple[int, float, float]]] = {}

    async def collect(tag: str) -> None:
        results[tag] = await run(tag)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, "a")
        tg.start_soon(collect, "b")
    # 20 leases wanted, 15 databases: some waited, none overlapped in time on the same database
    for db_a, start_a, end_a in results["a"]:
        for db_b, start_b, end_b in results["b"]:
            if db_a == db_b:
                assert end_a <= start_b or end_b <= start_a, f"database {db_a} held by both processes"
    check = aredis.Redis.from_url(small_redis)
    try:
        assert await check.keys("ie:slot:*") == []  # every lease was given back
    finally:
        await check.aclose()


async def test_lease_of_a_killed_process_is_reclaimed(clean_environ: pytest.MonkeyPatch, small_redis: str) -> None:
    clean_environ.setenv("TEST_REDIS_URL", small_redis)
    code = textwrap.dedent(
        """
        import os, anyio, isolated_env as ie
        async def main():
            async with ie.isolated_redis() as r:
                await r.set("left", "behind")
                print(r.db, flush=True)
                os.kill(os.getpid(), 9)
        anyio.run(main)
        """
    )
    proc = await anyio.run_process([sys.executable, "-c", code], env={**os.environ}, check=False)
    assert proc.returncode == -9
    dead_db = int(proc.stdout.split()[0])
    # capacity 15 means every database, including the dead process's, must be leased again
    async with ie.Environment(capacity=15) as env:
        handles = [await env.enter(ie.isolated_redis(), name=f"r{i}") for i in range(15)]
        assert dead_db in {h.db for h in handles}
        for h in handles:
            assert await h.dbsize() == 0  # the dead test's keys were flushed before reuse


async def test_unreachable_server(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("TEST_REDIS_HOST", "127.0.0.1")
    clean_environ.setenv("TEST_REDIS_PORT", "1")
    with pytest.raises(ie.ServiceUnavailable, match=r"cannot connect using TEST_REDIS_HOST.*Fix:"):
        async with ie.isolated_redis():
            pass


async def _lease_taken_while_held(small_redis: str, before: Callable[[], Awaitable[None]], wait_s: float) -> None:
    """A test that holds a database whose lease key is deleted (as a FLUSHALL elsewhere would),
    after ``before``, must fail with IsolationBroken once the heartbeat finds out (within ``wait_s``)."""
    control = aredis.from_url(small_redis)
    try:
        with pytest.raises(ie.IsolationBroken, match=r"lease of Redis database \d+ was taken by someone else"):
            async with ie.isolated_redis() as r:
                await r.set("k", "v")
                await before()
                assert await control.delete(f"ie:slot:{r.db}") == 1  # kept alive until now, now taken
                await anyio.sleep(wait_s)
    finally:
        await control.aclose()


async def test_a_lost_lease_fails_the_test_that_holds_it(
    clean_environ: pytest.MonkeyPatch, small_redis: str
) -> None:
    from isolated_env.resources import redis as resource

    clean_environ.setattr(resource, "HEARTBEAT_S", 0.02)
    clean_environ.setenv("TEST_REDIS_URL", small_redis)

    async def nothing() -> None:
        pass

    await _lease_taken_while_held(small_redis, nothing, 2.0)  # a few heartbeats
    # the database was not flushed by a lease that no longer owned it, nor handed out again
    async with ie.isolated_redis() as again:
        assert await again.dbsize() == 0


async def test_the_heartbeat_outlives_a_bad_setting_read_on_a_beat(
    clean_environ: pytest.MonkeyPatch, small_redis: str
) -> None:
    """A beat that raises (here a bad ISOLATED_ENV_LEASE_TTL, set for a while by some code) must not
    end the heartbeat thread: the leases it keeps would otherwise quietly expire, and be leased again."""
    from isolated_env.resources import redis as resource

    clean_environ.setattr(resource, "HEARTBEAT_S", None)
    clean_environ.setattr(resource, "LEASE_TTL_MS", None)
    clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", "3")  # a beat every second (a loaded machine may be late)
    clean_environ.setenv("TEST_REDIS_URL", small_redis)

    async def a_bad_setting_for_a_while() -> None:
        clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", "soon")
        await anyio.sleep(4.0)  # beats that read the bad setting, for longer than the TTL
        clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", "3")

    await _lease_taken_while_held(small_redis, a_bad_setting_for_a_while, 3.0)


async def test_keep_on_failure_keeps_the_database_leased_until_pruned(
    clean_environ: pytest.MonkeyPatch, small_redis: str
) -> None:
    from isolated_env._config import resolve
    from isolated_env.resources.redis import RedisResource

    clean_environ.setenv("TEST_REDIS_URL", small_redis)
    async with ie.Environment() as env:
        r = await env.enter(ie.isolated_redis(keep_on_failure=True))
        await r.set("evidence", "42")
        env.outcome = ie.Outcome.FAILED
    [kept] = env.kept
    assert kept.kind == "redis" and f"-n {r.db}" in kept.reach
    async with ie.Environment(capacity=15) as env2:
        others = [await env2.enter(ie.isolated_redis(), name=f"r{i}") for i in range(14)]
        assert r.db not in {h.db for h in others}, "a kept database was leased again"
    probe = aredis.from_url(r.url)
    try:
        assert await probe.get("evidence") == b"42"
        removed = await RedisResource.reap(resolve(), kept=True)
        assert any(f"database {r.db} " in name for name in removed)
        assert await probe.dbsize() == 0
    finally:
        await probe.aclose()


def test_idle_leases_stay_alive_while_the_event_loop_is_not_running(
    clean_environ: pytest.MonkeyPatch, small_redis: str
) -> None:
    """A pytest session's loop runs only during async tests: idle pooled slots must keep their
    leases between them, or another process would lease (and flush) them meanwhile."""
    import asyncio
    import time

    from isolated_env.resources import redis as resource

    clean_environ.setattr(resource, "LEASE_TTL_MS", 300)
    clean_environ.setattr(resource, "HEARTBEAT_S", 0.05)
    clean_environ.setenv("TEST_REDIS_URL", small_redis)
    import redis as sync_redis

    control = sync_redis.Redis.from_url(small_redis)

    async def lease_once() -> int:
        async with ie.isolated_redis() as r:
            return int(r.db)

    with asyncio.Runner() as runner:
        db = runner.run(lease_once())  # now idle in this loop's pool, its lease still ours
        time.sleep(1.0)  # the loop is not running: longer than three TTLs
        assert control.pttl(f"ie:slot:{db}") > 0, "an idle slot's lease expired while its loop was paused"
        assert runner.run(lease_once()) == db  # the same slot, still ours, handed out again
    control.close()


async def test_the_heartbeat_drops_a_redis_server_that_stopped(
    clean_environ: pytest.MonkeyPatch, redis_process: tuple[str, subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that stopped while a test held a database of it fails that test at once ("its
    server stopped") and is no longer knocked on at every beat, which held up the beats of the
    servers still up (and so their leases) for as long as the TTL."""
    import logging

    from isolated_env.resources import redis as resource

    url, proc = redis_process
    clean_environ.setattr(resource, "HEARTBEAT_S", 0.05)
    clean_environ.setenv("TEST_REDIS_URL", url)
    caplog.set_level(logging.INFO, logger="isolated_env")
    with pytest.raises(ie.IsolationBroken, match=r"lease of Redis database \d+ was lost: its server stopped"):
        async with ie.isolated_redis() as r:
            await r.set("k", "v")
            proc.terminate()
            await anyio.to_thread.run_sync(proc.wait)
            for _ in range(100):
                await anyio.sleep(0.02)
    assert any("stopped; its leases are lost" in rec.getMessage() for rec in caplog.records)
    assert not [rec for rec in caplog.records if "refreshing Redis leases" in rec.getMessage()]


async def test_a_server_that_stopped_takes_only_its_own_leases_with_it(
    clean_environ: pytest.MonkeyPatch, redis_process: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """A beat that finds its server stopped lets go of the leases it looked at, not of a server's
    started since on the same port (the same URL: free ports are handed out again) and leased
    meanwhile: those would never be renewed again, and their keys would expire under their tests."""
    from isolated_env._config import resolve
    from isolated_env._servers.redis import ensure_server
    from isolated_env.resources import redis as resource
    from isolated_env.resources._redis_leases import _LeaseKeeper

    url, proc = redis_process
    clean_environ.setenv("TEST_REDIS_URL", url)
    server = await ensure_server(resolve())
    keeper = _LeaseKeeper(resource._REFRESH, resource._owner, lambda: 30_000, lambda: 3600.0)
    old, new = resource._Slot(server, 1, None), resource._Slot(server, 2, None)
    with keeper._lock:
        keeper._held[server.key] = (server, {1: old, 2: new})  # the new one leased after the beat's look
    proc.terminate()
    await anyio.to_thread.run_sync(proc.wait)
    await anyio.to_thread.run_sync(keeper._refresh, server.key, server, {1: old}, {}, 30_000)
    assert old.lost is not None and "its server stopped" in old.lost
    assert new.lost is None and keeper._held[server.key][1] == {2: new}


async def test_the_client_names_its_library_and_version_to_the_server() -> None:
    # Taken from redis.__version__ once, not from the package metadata per client (a scan of every
    # installed distribution): the server still sees what redis-py itself would send.
    import importlib.metadata

    async with ie.isolated_redis() as r:
        info = await r.client_info()
    assert info.get("lib-name") == "redis-py"
    assert info.get("lib-ver") == importlib.metadata.version("redis")
