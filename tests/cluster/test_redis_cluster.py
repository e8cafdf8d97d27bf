"""Prefix mode on a real Redis Cluster: prefixes spread over every primary and cleaned on each,
cross-slot commands refused, and a primary killed mid-run."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import anyio
import pytest
from redis.exceptions import RedisClusterException, RedisError

import isolated_env as ie
from isolated_env._servers._redis_cluster import LocalCluster


def _keys_on(cluster: LocalCluster, port: int) -> list[bytes]:
    node = cluster.node(port)
    try:
        return sorted(k for k in node.scan_iter(match="{ie:*}:*") if not k.startswith(b"{ie:leases}"))
    finally:
        node.close()


async def test_prefixes_spread_over_every_primary_and_are_cleaned_on_each(
    clean_environ: pytest.MonkeyPatch, redis_cluster: LocalCluster
) -> None:
    clean_environ.setenv("TEST_REDIS_URL", redis_cluster.url)
    async with ie.Environment(capacity=12) as env:
        handles = [await env.enter(ie.isolated_redis(), name=f"r{i}") for i in range(12)]
        for h in handles:
            await h.set(h.key("k"), h.prefix)
        owners = {redis_cluster.primary_of(h.key("k")) for h in handles}
        assert owners == set(redis_cluster.primaries), "12 prefixes should land on all 3 primaries"
        on_nodes = sum(len(_keys_on(redis_cluster, port)) for port in redis_cluster.primaries)
        assert on_nodes == 12
    for port in redis_cluster.primaries:
        assert _keys_on(redis_cluster, port) == [], f"keys left on primary {port}"


async def test_a_command_across_two_prefixes_is_refused_with_a_clear_error(
    clean_environ: pytest.MonkeyPatch, redis_cluster: LocalCluster
) -> None:
    clean_environ.setenv("TEST_REDIS_URL", redis_cluster.url)
    async with ie.isolated_redis() as a, ie.isolated_redis() as b:
        with pytest.raises(RedisClusterException, match="same key slot"):
            await a.execute_command("MSET", a.key("x"), 1, b.key("y"), 2)
        with pytest.raises(RedisClusterException, match="same key slot"):
            await a.execute_command("SUNIONSTORE", a.key("dest"), a.key("s"), "{other}:s")
        # Sent to a node as is, the server refuses it too (its ACL check comes before CROSSSLOT).
        node = redis_cluster.node(redis_cluster.primary_of(a.key("x")), username=a.username, password=a.password)
        try:
            with pytest.raises(RedisError, match="No permissions to access a key"):
                node.execute_command("MSET", a.key("x"), 1, "{ie:elsewhere}:y", 2)
        finally:
            node.close()
        assert await a.exists(a.key("x")) == 0 and await b.exists(b.key("y")) == 0  # nothing half-done


# The run, in a process of its own: after a topology change redis-py's cluster client leaves
# connections of the nodes it dropped to the garbage collector (ResourceWarnings after the loop
# closed), which would fail whichever test of this process runs next.
_FAILOVER_RUN = textwrap.dedent(
    """
    import json, sys, anyio, isolated_env as ie

    async def main():
        async with ie.Environment(capacity=12) as bystanders:
            # Tests on every primary, holding keys, while one primary dies under one of them.
            handles = [await bystanders.enter(ie.isolated_redis(), name=f"r{i}") for i in range(12)]
            for h in handles:
                await h.set(h.key("mine"), h.prefix)
            async with ie.isolated_redis() as running:  # the test running when its primary dies
                await running.set(running.key("before"), 1)
                print(json.dumps([running.key("before")] + [h.key("mine") for h in handles]), flush=True)
                await anyio.to_thread.run_sync(sys.stdin.readline)  # the parent kills a primary meanwhile
            async with ie.Environment() as after:  # the next environment works
                r = await after.enter(ie.isolated_redis())
                await r.set(r.key("after"), "ok")
                after_ok = await r.get(r.key("after")) == b"ok"
            kept = [await h.get(h.key("mine")) == h.prefix.encode() for h in handles]
        print(json.dumps({"after": after_ok, "kept": kept}), flush=True)

    anyio.run(main)
    """
)


async def test_a_failover_of_one_primary_mid_run(
    clean_environ: pytest.MonkeyPatch, failover_cluster: LocalCluster
) -> None:
    cluster = failover_cluster
    clean_environ.setenv("TEST_REDIS_URL", cluster.url)
    async with await anyio.open_process([sys.executable, "-c", _FAILOVER_RUN], env={**os.environ}) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        lines = proc.stdout
        out = b""
        while b"\n" not in out:
            out += await lines.receive()
        first, _, rest = out.partition(b"\n")
        running_key, *keys = json.loads(first)
        victim = cluster.primary_of(running_key)  # the primary under the running test
        assert any(cluster.primary_of(k) != victim for k in keys), "every prefix on one primary"
        [replica] = cluster.replicas[victim]
        primary = cluster.node(victim)
        try:
            primary.execute_command("WAIT", 1, 5000)  # replication is asynchronous: let it catch up
        finally:
            primary.close()
        cluster.kill(victim)
        await anyio.to_thread.run_sync(cluster.wait_ok)
        assert cluster.primary_of(running_key) == replica  # the replica took over
        await proc.stdin.send(b"go\n")
        async for chunk in lines:
            rest += chunk
        assert await proc.wait() == 0
    result = json.loads(rest.decode().strip().splitlines()[-1])
    assert result["after"] is True
    # No other test's keys were touched: the survivors' and the failed-over primary's alike.
    assert result["kept"] == [True] * 12
