"""Prefix mode on every server it serves: a Redis Cluster, a server with one database, and the
embedded server asked for it. A test's ACL user reaches its own prefix only; everything else is
refused by the server, and its keys are gone when it ends."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aredis
from redis.exceptions import NoPermissionError, RedisClusterException, ResponseError

import isolated_env as ie
from isolated_env.resources._redis_handle import RedisPrefixHandle

Server = tuple[str, pytest.MonkeyPatch]


def redis_ctx(**kwargs: object) -> ie.ResourceContext[ie.RedisHandle]:
    return ie.isolated_redis(mode="prefix", **kwargs)  # type: ignore[arg-type]


async def _all_keys(r: RedisPrefixHandle, pattern: str) -> list[bytes]:
    """Every key matching ``pattern`` on every node, as the server's admin (not the test's user)."""
    from isolated_env._drivers import redis as driver
    from isolated_env._drivers import redis_cluster

    if r.server.cluster:
        admin = redis_cluster.asyncio_cluster_client(**redis_cluster.cluster_kwargs(r.server))
    else:
        admin = driver.asyncio_client(**r.server.client_kwargs(0))
    try:
        return sorted([k async for k in admin.scan_iter(match=pattern)])
    finally:
        await admin.aclose()


async def test_the_mode_follows_the_server(prefix_server: Server) -> None:
    kind, _ = prefix_server
    async with ie.isolated_redis() as r:
        if kind == "embedded":  # 1024 databases: a database per test
            assert r.prefix == "" and r.db >= 1 and r.key("k") == "k"
        else:
            assert isinstance(r, RedisPrefixHandle) and r.db == 0
            assert r.prefix.startswith("{ie:") and r.prefix.endswith("}:")
            assert r.server.cluster is (kind == "cluster")
            assert type(r.client).__name__ == ("RedisCluster" if kind == "cluster" else "Redis")


async def test_keys_are_private_and_deleted_on_release(prefix_server: Server) -> None:
    async with redis_ctx() as r:
        assert isinstance(r, RedisPrefixHandle)
        await r.set(r.key("user:1"), "alice", ex=60)
        await r.hset(r.key("h"), mapping={"a": 1})
        assert await r.get(r.key("user:1")) == b"alice"
        prefix = r.prefix
        assert await _all_keys(r, prefix + "*") == [(prefix + "h").encode(), (prefix + "user:1").encode()]
    assert await _all_keys(r, prefix + "*") == []


async def test_outside_the_prefix_everything_is_refused(prefix_server: Server) -> None:
    async with redis_ctx() as a, redis_ctx() as b:
        assert a.prefix != b.prefix
        await b.set(b.key("secret"), "b's")
        refused = [
            ("GET", b.key("secret")), ("SET", b.key("secret"), "overwritten"), ("SET", "no-prefix", 1),
            ("DEL", b.key("secret")), ("PUBLISH", b.key("chan"), "x"), ("PUBLISH", "chan", "x"),
            ("FLUSHDB",), ("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "maxmemory"), ("SELECT", "0"),
            ("EVAL", "return redis.call('GET', KEYS[1])", 1, b.key("secret")),
        ]
        keyless = {"FLUSHDB", "FLUSHALL", "KEYS", "CONFIG", "SELECT"}
        for command in refused:
            # A cluster client needs to be told where a command without a key goes.
            where = {"target_nodes": a.client.get_random_node()} if a.server.cluster and command[0] in keyless else {}
            with pytest.raises((NoPermissionError, ResponseError)) as caught:
                await a.execute_command(*command, **where)
            assert "permission" in str(caught.value).lower() or "NOPERM" in str(caught.value), command
        assert await b.get(b.key("secret")) == b"b's"  # untouched by all of it


async def test_publish_reaches_subscribers_of_the_same_prefix(prefix_server: Server) -> None:
    async with redis_ctx() as r:
        pubsub = r.pubsub()
        try:
            await pubsub.subscribe(r.key("news"))
            other = r.pubsub()
            try:
                with pytest.raises((NoPermissionError, ResponseError), match=r"(?i)permission"):
                    await other.subscribe("news")  # a channel outside the prefix: refused in its reply
                    for _ in range(20):
                        await other.get_message(timeout=0.1)
            finally:
                await other.aclose()
            for _ in range(50):
                await r.publish(r.key("news"), "hello")
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    break
            assert message is not None and message["data"] == b"hello"
        finally:
            await pubsub.aclose()


async def test_multi_key_commands_work_inside_a_prefix_and_not_across_two(prefix_server: Server) -> None:
    async with redis_ctx() as a, redis_ctx() as b:
        await a.mset({a.key("x"): 1, a.key("y"): 2})
        assert await a.mget([a.key("x"), a.key("y")]) == [b"1", b"2"]
        async with a.pipeline(transaction=True) as pipe:
            pipe.incr(a.key("x")).incr(a.key("y"))
            assert await pipe.execute() == [2, 3]
        assert await a.eval("return redis.call('MGET', KEYS[1], KEYS[2])", 2, a.key("x"), a.key("y")) == [b"2", b"3"]
        # Two prefixes: two slots on a cluster (refused by the client before the ACL is asked),
        # another test's keys on a single server (refused by the server).
        with pytest.raises((RedisClusterException, NoPermissionError, ResponseError),
                           match=r"same (key )?slot|CROSSSLOT|permission"):
            await a.mset({a.key("x"): 1, b.key("y"): 2})


async def test_the_url_logs_in_as_the_prefix_user(prefix_server: Server) -> None:
    async with redis_ctx() as r:
        await r.set(r.key("k"), "v")
        if r.server.cluster:
            from redis.asyncio.cluster import RedisCluster

            other = RedisCluster.from_url(r.url)
        else:
            other = aredis.Redis.from_url(r.url)
        try:
            assert await other.get(r.key("k")) == b"v"
            with pytest.raises((NoPermissionError, ResponseError)):
                await other.set("elsewhere", 1)
        finally:
            await other.aclose()
        assert "***" in repr(r) and r.password is not None and r.password not in repr(r)


async def test_concurrent_tests_get_distinct_prefixes(prefix_server: Server) -> None:
    prefixes: list[str] = []

    async def one(n: int) -> None:
        async with ie.Environment(capacity=30) as env:
            r = await env.enter(redis_ctx())
            await r.set(r.key("n"), n)
            prefixes.append(r.prefix)
            await anyio.sleep(0.01)
            assert int(await r.get(r.key("n"))) == n
            assert [k async for k in r.scan_iter(match=r.key("*"))] == [r.key("n").encode()]

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(one, n)
    assert len(prefixes) == 30 and len(set(prefixes)) == 30


async def test_reset_deletes_the_keys(prefix_server: Server) -> None:
    async with ie.Environment() as env:
        r = await env.enter(redis_ctx())
        await r.set(r.key("a"), 1)
        await env.reset()
        assert await r.exists(r.key("a")) == 0


async def test_the_prefix_of_a_killed_process_is_freed_and_wiped(prefix_server: Server) -> None:
    from isolated_env._config import resolve
    from isolated_env.resources.redis import RedisResource

    code = textwrap.dedent(
        """
        import os, anyio, isolated_env as ie
        async def main():
            async with ie.isolated_redis(mode="prefix") as r:
                await r.set(r.key("left"), "behind")
                print(r.prefix, flush=True)
                os.kill(os.getpid(), 9)
        anyio.run(main)
        """
    )
    proc = await anyio.run_process([sys.executable, "-c", code], env={**os.environ}, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    dead = proc.stdout.decode().split()[0]
    async with redis_ctx() as r:
        if r.prefix == dead:  # this process's first lease of this server reaped it, and wiped it
            assert await _all_keys(r, dead + "*") == []
            return
        assert await _all_keys(r, dead + "*") == [(dead + "left").encode()]
        # What the next run's first lease (or isolated-env prune) does: its owner is provably dead.
        removed = await RedisResource.reap(resolve())
        assert f"redis prefix {dead} ({r.server.redacted})" in removed
        assert await _all_keys(r, dead + "*") == []
        assert not any(r.prefix in name for name in removed)


async def test_a_lost_lease_fails_the_test_that_holds_it(prefix_server: Server) -> None:
    from isolated_env.resources import redis as resource
    from isolated_env.resources._redis_prefixes import lease_key

    _, env = prefix_server
    env.setattr(resource, "HEARTBEAT_S", 0.02)
    with pytest.raises(ie.IsolationBroken, match=r"lease of Redis prefix \{ie:\d+\}: was taken by someone else"):
        async with redis_ctx() as r:
            await r.set(r.key("k"), "v")
            n = int(r.prefix[4:-2])
            from isolated_env._drivers import redis as driver
            from isolated_env._drivers import redis_cluster

            admin = (redis_cluster.asyncio_cluster_client(**redis_cluster.cluster_kwargs(r.server))
                     if r.server.cluster else driver.asyncio_client(**r.server.client_kwargs(0)))
            try:
                assert await admin.delete(lease_key(n)) == 1  # as a FLUSHALL elsewhere would
            finally:
                await admin.aclose()
            for _ in range(200):
                await anyio.sleep(0.01)
    # not wiped by a lease that no longer owned it: whoever leases it next starts by wiping it
    async with redis_ctx() as again:
        assert [k async for k in again.scan_iter(match=again.key("*"))] == []


async def _admin_of(r: RedisPrefixHandle) -> Any:
    from isolated_env._drivers import redis as driver
    from isolated_env._drivers import redis_cluster

    if r.server.cluster:
        return redis_cluster.asyncio_cluster_client(**redis_cluster.cluster_kwargs(r.server))
    return driver.asyncio_client(**r.server.client_kwargs(0))


async def test_a_prefix_handed_out_again_from_the_pool_is_kept_by_the_current_period(prefix_server: Server) -> None:
    """A prefix idle in the loop's pool is handed out again without a new lease: the heartbeat must
    still follow the period in force (here shortened after the first use), or a loss is found late."""
    from isolated_env.resources import redis as resource
    from isolated_env.resources._redis_prefixes import lease_key

    _, env = prefix_server
    async with redis_ctx() as first:  # the heartbeat waits by the default period (seconds)
        pass
    env.setattr(resource, "HEARTBEAT_S", 0.02)
    with pytest.raises(ie.IsolationBroken, match=r"was taken by someone else"):
        async with redis_ctx() as r:
            assert r.prefix == first.prefix  # from the pool: no new lease
            admin = await _admin_of(r)
            try:
                assert await admin.delete(lease_key(int(r.prefix[4:-2]))) == 1
            finally:
                await admin.aclose()
            await anyio.sleep(1.0)


async def test_a_prefix_whose_lease_was_lost_in_the_pool_is_not_handed_out_again(prefix_server: Server) -> None:
    from isolated_env.resources import redis as resource
    from isolated_env.resources._redis_prefixes import lease_key

    _, env = prefix_server
    env.setattr(resource, "HEARTBEAT_S", 0.02)
    async with redis_ctx() as first:
        n = int(first.prefix[4:-2])
    admin = await _admin_of(first)
    try:
        assert await admin.delete(lease_key(n)) == 1  # taken while idle in the pool
        await anyio.sleep(0.5)  # beats that find it lost
        async with redis_ctx() as r:
            await r.set(r.key("k"), "v")
            # whatever prefix it is, this test holds its lease now
            assert await admin.get(lease_key(int(r.prefix[4:-2]))) is not None
            assert await r.get(r.key("k")) == b"v"
    finally:
        await admin.aclose()


async def test_keep_on_failure_keeps_the_prefix_until_pruned(prefix_server: Server) -> None:
    from isolated_env._config import resolve
    from isolated_env.resources.redis import RedisResource

    async with ie.Environment() as env:
        r = await env.enter(redis_ctx(keep_on_failure=True))
        await r.set(r.key("evidence"), "42")
        env.outcome = ie.Outcome.FAILED
    [kept] = env.kept
    assert kept.kind == "redis" and r.prefix in kept.where and r.prefix in kept.reach
    async with ie.Environment(capacity=5) as env2:
        others = [await env2.enter(redis_ctx(), name=f"r{i}") for i in range(5)]
        assert r.prefix not in {h.prefix for h in others}, "a kept prefix was leased again"
    assert await _all_keys(r, r.key("*")) == [r.key("evidence").encode()]
    removed = await RedisResource.reap(resolve(), kept=True)
    assert any(r.prefix in name for name in removed)
    assert await _all_keys(r, r.key("*")) == []


async def test_a_mode_the_server_cannot_serve_or_an_unknown_one_is_a_clear_error(prefix_server: Server) -> None:
    kind, _ = prefix_server
    with pytest.raises(ie.ConfigError, match=r"mode='fast'.*'db'.*'prefix'"):
        ie.isolated_redis(mode="fast")
    if kind == "embedded":
        return
    what = "is a Redis Cluster" if kind == "cluster" else "has a single database"
    with pytest.raises(ie.ConfigError, match=rf"mode='db'.*{what}.*use mode='prefix'"):
        async with ie.isolated_redis(mode="db"):
            pass


async def test_prune_deletes_the_keys_of_prefixes_nobody_leases(prefix_server: Server) -> None:
    from isolated_env._config import resolve
    from isolated_env.resources.redis import RedisResource

    async with redis_ctx() as live:
        await live.set(live.key("alive"), 1)
        from isolated_env._drivers import redis as driver
        from isolated_env._drivers import redis_cluster

        admin = (redis_cluster.asyncio_cluster_client(**redis_cluster.cluster_kwargs(live.server))
                 if live.server.cluster else driver.asyncio_client(**live.server.client_kwargs(0)))
        try:
            # What a run on another machine left when it died: keys, and a lease that has expired.
            await admin.set("{ie:777}:orphan", "x")
            removed = await RedisResource.reap(resolve())
            assert any("{ie:777}:" in name for name in removed)
            assert await admin.exists("{ie:777}:orphan") == 0
            assert not any(live.prefix in name for name in removed)
            assert await live.get(live.key("alive")) == b"1"  # a live lease's keys are never touched
        finally:
            await admin.aclose()


async def test_a_user_that_may_not_make_acl_users_gets_a_clear_error(
    clean_environ: pytest.MonkeyPatch, single_db_redis: str
) -> None:
    admin = aredis.Redis.from_url(single_db_redis)
    try:
        await admin.execute_command("ACL", "SETUSER", "no-acl", "on", ">no-acl-pw", "~*", "&*", "+@all", "-acl")
        clean_environ.setenv("TEST_REDIS_URL", single_db_redis.replace(":single-db-secret@", "no-acl:no-acl-pw@"))
        before = set(await admin.keys("{ie:leases}:*"))  # this process's banked leases, if any
        with pytest.raises(ie.ConfigError, match=r"refused ACL SETUSER.*allowed \+acl"):
            async with ie.isolated_redis():
                pass
        assert set(await admin.keys("{ie:leases}:*")) == before  # the lease it took was given back
    finally:
        await admin.execute_command("ACL", "DELUSER", "no-acl")
        await admin.aclose()


def test_a_new_event_loop_takes_the_prefix_the_last_one_gave_back(prefix_server: Server) -> None:
    """pytest-asyncio makes a loop per test: a clean prefix stays leased by the process between
    loops (kept alive by the heartbeat thread), and the next loop gets it wiped, with a new client."""
    import asyncio

    from isolated_env.resources import redis as resource
    from isolated_env.resources._redis_prefixes import lease_key

    _, env = prefix_server
    env.setattr(resource, "LEASE_TTL_MS", 1000)  # not shorter: a beat on a loaded machine takes a while
    env.setattr(resource, "HEARTBEAT_S", 0.05)

    async def lease_once(write: bool) -> tuple[str, list[bytes]]:
        async with redis_ctx() as r:
            left = [k async for k in r.scan_iter(match=r.key("*"))]
            if write:
                await r.set(r.key("from-the-first-loop"), 1)
            return r.prefix, left

    with asyncio.Runner() as runner:
        first, _ = runner.run(lease_once(True))
    time.sleep(3.2)  # no loop runs: longer than three TTLs
    with asyncio.Runner() as runner:
        second, left = runner.run(lease_once(False))
    assert second == first and left == []
    # and the lease is still this process's (banked), its TTL refreshed by the heartbeat
    url = os.environ.get("TEST_REDIS_URL")
    if url is not None:
        import redis as sync_redis
        from redis.cluster import RedisCluster

        admin = RedisCluster.from_url(url) if prefix_server[0] == "cluster" else sync_redis.Redis.from_url(url)
        try:
            assert admin.pttl(lease_key(int(first[4:-2]))) > 0
        finally:
            admin.close()


def test_a_loop_ends_at_once_when_the_server_of_a_pooled_prefix_stopped(
    stoppable_single_db_redis: tuple[str, Callable[[], None]], clean_environ: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A prefix idle in the loop's pool when its server stops (a test's own server, stopped by its
    fixture before the session's loop ends): the heartbeat finds the server gone and the lease
    lost, and closing the loop gives nothing back to a server that cannot answer. It took the
    loop's close minutes (redis-py's retries with backoff, a reset timeout per instance)."""
    from isolated_env.resources import redis as resource

    url, stop = stoppable_single_db_redis
    clean_environ.setenv("TEST_REDIS_URL", url)
    clean_environ.setattr(resource, "HEARTBEAT_S", 0.02)
    ended: list[float] = []

    async def main() -> None:
        async with redis_ctx() as r:
            await r.set(r.key("k"), "v")
        stop()
        for _ in range(500):
            if "stopped; its leases are lost" in caplog.text:
                break
            await anyio.sleep(0.01)
        ended.append(time.perf_counter())

    with caplog.at_level(logging.INFO, logger="isolated_env"):
        asyncio.run(main())
        closed = time.perf_counter()
    assert "stopped; its leases are lost" in caplog.text
    assert closed - ended[0] < 3, f"the loop took {closed - ended[0]:.1f} s to close"
