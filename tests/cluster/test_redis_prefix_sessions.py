"""Prefix mode between tests: a connection a test logged in as another user is not handed to the
next test of its prefix, and SCAN through the handle stays in the prefix (ACL key patterns do not
filter SCAN; KEYS is refused). On a Redis Cluster, a server with one database and the embedded one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.exceptions import NoPermissionError

import isolated_env as ie
from isolated_env.resources._redis_handle import RedisPrefixHandle

Server = tuple[str, pytest.MonkeyPatch]


def redis_ctx() -> ie.ResourceContext[ie.RedisHandle]:
    return ie.isolated_redis(mode="prefix")


async def _auth(r: RedisPrefixHandle, other: RedisPrefixHandle, **where: Any) -> None:
    await r.execute_command("AUTH", other.username, other.password, **where)


async def _hello(r: RedisPrefixHandle, other: RedisPrefixHandle, **where: Any) -> None:
    await r.execute_command("HELLO", 2, "AUTH", other.username, other.password, **where)


async def _lowercase(r: RedisPrefixHandle, other: RedisPrefixHandle, **where: Any) -> None:
    await r.execute_command("auth", other.username, other.password, **where)


async def _reset(r: RedisPrefixHandle, other: RedisPrefixHandle, **where: Any) -> None:
    await r.execute_command("RESET", **where)  # back to the server's default user


async def _pipeline(r: RedisPrefixHandle, other: RedisPrefixHandle, **where: Any) -> None:
    if r.server.cluster:
        pytest.skip("a cluster pipeline routes commands by key: AUTH has none")
    async with r.client.pipeline(transaction=False) as pipe:
        pipe.execute_command("AUTH", other.username, other.password)
        pipe.set(other.key("via-pipeline"), 1)
        await pipe.execute()


ReAuth = Callable[..., Awaitable[None]]


async def _whoami(r: RedisPrefixHandle) -> set[bytes]:
    """Who each connection of the client is logged in as (on a cluster: on every node)."""
    if not r.server.cluster:
        return {await r.execute_command("ACL", "WHOAMI")}
    return set((await r.client.execute_command("ACL", "WHOAMI", target_nodes=r.client.get_nodes())).values())


@pytest.mark.parametrize(
    "log_in", [_auth, _hello, _lowercase, _reset, _pipeline], ids=["auth", "hello", "lower", "reset", "pipeline"]
)
async def test_a_connection_logged_in_as_another_user_is_not_handed_on(prefix_server: Server, log_in: ReAuth) -> None:
    async with redis_ctx() as other:
        assert isinstance(other, RedisPrefixHandle)
        async with redis_ctx() as r:
            assert isinstance(r, RedisPrefixHandle)
            prefix, user = r.prefix, r.username
            # On a cluster, AUTH goes to one node: the node serving the other prefix's keys.
            where = {"target_nodes": r.client.get_node_from_key(other.key("x"))} if r.server.cluster else {}
            await log_in(r, other, **where)
            if log_in is not _reset:
                await r.set(other.key("written"), 1)  # the connection now holds the other prefix's rights
        async with redis_ctx() as again:
            assert isinstance(again, RedisPrefixHandle)
            assert (again.prefix, again.username) == (prefix, user)  # the same pooled prefix and client
            assert again.client is r.client
            assert await _whoami(again) == {user.encode()}
            with pytest.raises(NoPermissionError):
                await again.set(other.key("written"), 2)
            await again.set(again.key("mine"), 1)
            assert await again.get(again.key("mine")) == b"1"


async def test_scan_through_the_handle_stays_in_the_prefix(prefix_server: Server) -> None:
    async with redis_ctx() as a, redis_ctx() as b:
        assert isinstance(a, RedisPrefixHandle) and isinstance(b, RedisPrefixHandle)
        await a.set(a.key("user:1"), 1)
        await a.set(a.key("order:1"), 1)
        await b.set(b.key("user:1"), 1)
        mine = {a.key("user:1").encode(), a.key("order:1").encode()}
        assert {k async for k in a.scan_iter()} == mine
        assert {k async for k in a.scan_iter(match="*")} == mine
        assert {k async for k in a.scan_iter(match="user:*")} == {a.key("user:1").encode()}  # put under it
        assert {k async for k in a.scan_iter(match=a.key("order:*"))} == {a.key("order:1").encode()}
        assert {k async for k in a.scan_iter(match=b.key("*"))} == set()  # another prefix: under ours
        if not a.server.cluster:  # a cluster client's scan() answers per node
            cursor, found = 0, set()
            while True:
                cursor, keys = await a.scan(cursor, count=1000)
                found |= set(keys)
                if cursor == 0:
                    break
            assert found == mine
        where = {"target_nodes": a.client.get_random_node()} if a.server.cluster else {}
        with pytest.raises(NoPermissionError):
            await a.execute_command("KEYS", "*", **where)  # no pattern the server could confine


async def test_the_same_test_code_scans_its_keys_in_both_modes() -> None:
    for mode in ("db", "prefix"):
        async with ie.isolated_redis(mode=mode) as r:
            await r.set(r.key("user:1"), 1)
            assert [k async for k in r.scan_iter(match="*")] == [r.key("user:1").encode()]
