"""Redis guard rails: a test's client cannot reach another test's database, the lease keys or the
server's configuration, and its pub/sub channels are its own (real embedded server)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import NoPermissionError, ResponseError

import isolated_env as ie
from isolated_env._config import resolve
from isolated_env._servers import redis as servers
from isolated_env.resources.redis import RedisHandle, _owner


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RedisHandle, RedisHandle]]:
    """Two tests at once, the second holding a key the first must not be able to touch."""
    async with ie.isolated_redis() as a, ie.isolated_redis() as b:
        if not a.server.guarded:
            pytest.skip("the Redis server has no guard rails (an external server: see docs/reliability.md)")
        await b.set("precious", "b's")
        yield a, b
        assert await b.get("precious") == b"b's"


async def _admin(db: int = 0) -> Any:
    server = await servers.ensure_server(resolve())
    return aredis.Redis(**server.client_kwargs(db))


def harmful(a: RedisHandle, b: RedisHandle) -> list[tuple[Any, ...]]:
    return [
        ("SELECT", b.db), ("SELECT", 0), ("SWAPDB", a.db, b.db), ("MOVE", "k", b.db), ("FLUSHALL",),
        ("COPY", "k", "ie:slot:1", "DB", 0, "REPLACE"), ("COPY", "k", "precious", "DB", b.db, "REPLACE"),
        ("MIGRATE", "127.0.0.1", "1", "k", b.db, 100), ("CONFIG", "SET", "maxmemory", "1mb"),
        ("CONFIG", "GET", "*"), ("ACL", "SETUSER", "intruder", "on", "nopass", "+@all"),
        ("CLIENT", "KILL", "TYPE", "normal"), ("CLIENT", "PAUSE", 1000), ("MONITOR",),
        ("REPLICAOF", "127.0.0.1", "1"), ("BGSAVE",), ("RESET",),
    ]


async def test_each_harmful_command_is_refused_with_a_clear_error(pair: tuple[RedisHandle, RedisHandle]) -> None:
    a, b = pair
    await a.set("k", "a's")
    for command in harmful(a, b):
        with pytest.raises(NoPermissionError, match="guard rails") as caught:
            await a.execute_command(*command)
        assert "isolated_redis(admin=True)" in str(caught.value), command
    assert await a.get("k") == b"a's"  # the test's own database still works, on the same client
    assert await a.acl_whoami() == f"ie-db-{a.db}"


async def test_a_script_cannot_reach_another_database(pair: tuple[RedisHandle, RedisHandle]) -> None:
    a, b = pair
    with pytest.raises(ResponseError, match=r"(?i)permission|can't run this command"):
        await a.eval(f"redis.call('SELECT', {b.db}); return redis.call('FLUSHDB')", 0)


async def test_lease_keys_cannot_be_touched(pair: tuple[RedisHandle, RedisHandle]) -> None:
    a, _ = pair
    key = f"ie:slot:{a.db}"
    await a.delete(key)  # the test's own database: a key of that name is just a key there
    await a.set(key, "forged")
    control = await _admin(0)
    try:
        assert await control.get(key) == _owner().encode()  # the lease in database 0 is intact
    finally:
        await control.aclose()
    with pytest.raises(NoPermissionError):
        await a.execute_command("SELECT", 0)


async def test_our_flush_on_release_stays_on_the_test_database() -> None:
    """Even a test that re-authenticates its pooled connection as the admin user and moves it to
    another database cannot make the release flush that database: the flush has its own connection."""
    async with ie.isolated_redis() as b:
        await b.set("precious", "b's")
        async with ie.isolated_redis() as a:
            if not a.server.guarded:
                pytest.skip("the Redis server has no guard rails")
            try:
                await a.execute_command("AUTH", "default", a.server.password or "any")
            except ResponseError:
                pytest.skip("the server requires the admin password, which a test does not have")
            await a.execute_command("SELECT", b.db)  # the pooled connection now points at b's database
        assert await b.get("precious") == b"b's"
        async with ie.isolated_redis() as c:  # the next lease (maybe of a's slot) is restricted again
            assert await c.acl_whoami() == f"ie-db-{c.db}"


async def test_the_url_reaches_the_same_database_with_the_same_rails(pair: tuple[RedisHandle, RedisHandle]) -> None:
    a, b = pair
    await a.set("k", "via handle")
    other = aredis.from_url(a.url)
    try:
        assert await other.get("k") == b"via handle"
        with pytest.raises(NoPermissionError):
            await other.execute_command("SELECT", b.db)
        with pytest.raises(NoPermissionError):
            await other.flushall()
    finally:
        await other.aclose()


async def test_publish_reaches_only_the_same_test(pair: tuple[RedisHandle, RedisHandle]) -> None:
    a, b = pair
    a_sub, b_sub = a.pubsub(), b.pubsub()
    try:
        await a_sub.subscribe("news")
        await b_sub.subscribe("news")
        for sub in (a_sub, b_sub):
            confirm = await sub.get_message(timeout=2)
            assert confirm is not None and confirm["type"] == "subscribe" and confirm["channel"] == b"news"
        assert await b.publish("news", "from b") == 1  # b's own subscriber only
        assert await b.execute_command("PUBLISH", f"ie:{a.db}:news", "spoofed") == 0
        got = await b_sub.get_message(timeout=2)
        assert got is not None and (got["channel"], got["data"]) == (b"news", b"from b")
        assert await a_sub.get_message(timeout=0.2) is None
        assert await a.pubsub_channels() == [b"news"]
        assert await b.pubsub_numsub("news") == [(b"news", 1)]
    finally:
        await a_sub.aclose()
        await b_sub.aclose()


def _seen(message: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if message is None else (message["pattern"], message["channel"], message["data"])


async def test_psubscribe_patterns_stay_within_the_test(pair: tuple[RedisHandle, RedisHandle]) -> None:
    a, b = pair
    a_sub, b_sub = a.pubsub(), b.pubsub()
    try:
        await a_sub.psubscribe("news.*")
        await b_sub.psubscribe("*")
        for sub, pattern in ((a_sub, b"news.*"), (b_sub, b"*")):
            confirm = await sub.get_message(timeout=2)
            assert confirm is not None and confirm["type"] == "psubscribe" and confirm["channel"] == pattern
        assert await b.publish("news.sports", "b's news") == 1  # b's own "*" only, not a's "news.*"
        assert await a.publish("news.sports", "a's news") == 1
        assert _seen(await a_sub.get_message(timeout=2)) == (b"news.*", b"news.sports", b"a's news")
        assert _seen(await b_sub.get_message(timeout=2)) == (b"*", b"news.sports", b"b's news")
        assert await a_sub.get_message(timeout=0.2) is None and await b_sub.get_message(timeout=0.2) is None
    finally:
        await a_sub.aclose()
        await b_sub.aclose()


async def test_admin_true_gets_a_server_of_its_own(pair: tuple[RedisHandle, RedisHandle]) -> None:
    _, b = pair
    async with ie.isolated_redis(admin=True) as admin:
        assert admin.server.source == "private" and admin.server.unix_socket != b.server.unix_socket
        assert await admin.config_set("notify-keyspace-events", "KEA")
        await admin.set("x", 1)
        assert await admin.execute_command("SELECT", 5)
        assert await admin.flushall()
        assert await admin.swapdb(1, 2)
        sub = admin.pubsub()
        await sub.psubscribe("news.*")
        assert (await sub.get_message(timeout=2) or {}).get("channel") == b"news.*"
        await sub.aclose()
        assert admin.server.unix_socket is not None
        directory = Path(admin.server.unix_socket).parent
    assert directory.name not in os.listdir(directory.parent)  # stopped, its directory removed


async def test_admin_true_cannot_be_kept() -> None:
    with pytest.raises(ie.ConfigError, match="admin=True"):
        ie.isolated_redis(admin=True, keep_on_failure=True)


@pytest.fixture
async def external(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[servers.RedisServer]:
    """A server of our own, reached the way an external one is (``connect_external``)."""
    import anyio.to_thread

    server, private = await anyio.to_thread.run_sync(servers.start_private, resolve())
    monkeypatch.delenv(servers.GUARD_VAR, raising=False)
    try:
        yield private
    finally:
        await anyio.to_thread.run_sync(server.close)


def _endpoint(server: servers.RedisServer, user: str | None = None, password: str | None = None) -> Any:
    from isolated_env._config import ExternalEndpoint

    assert server.unix_socket is not None
    return ExternalEndpoint(
        scheme="unix", host=server.unix_socket, port=None, user=user or server.username,
        password=password or server.password, database=None, source="TEST_REDIS_URL",
    )


async def test_external_servers_keep_the_old_behaviour_unless_asked(
    external: servers.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from isolated_env.resources._redis_guard import test_client

    plain = await servers.RedisProvider().connect_external(_endpoint(external), resolve())
    assert not plain.guarded and plain.test_kwargs(3) == plain.client_kwargs(3)
    monkeypatch.setenv(servers.GUARD_VAR, "1")
    guarded = await servers.RedisProvider().connect_external(_endpoint(external), resolve())
    assert guarded.guarded
    client = test_client(guarded, 3)
    try:
        assert await client.acl_whoami() == "ie-db-3"
        with pytest.raises(NoPermissionError, match="guard rails"):
            await client.execute_command("SELECT", 4)
        with pytest.raises(NoPermissionError, match="guard rails"):
            await client.flushall()
    finally:
        await client.aclose()


async def test_external_guard_rails_need_acl_rights(
    external: servers.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = aredis.Redis(**external.client_kwargs(0))
    try:
        await admin.execute_command("ACL", "SETUSER", "weak", "on", ">weak-pw", "~*", "&*", "+@all", "-@admin")
    finally:
        await admin.aclose()
    monkeypatch.setenv(servers.GUARD_VAR, "1")
    with pytest.raises(ie.ConfigError, match=f"{servers.GUARD_VAR}=1 needs a Redis user allowed to run ACL SETUSER"):
        await servers.RedisProvider().connect_external(_endpoint(external, "weak", "weak-pw"), resolve())
