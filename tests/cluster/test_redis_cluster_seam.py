"""Canary for the one private seam of redis-py we use: a cluster client's ``commands_parser``,
given the command table another client of the same cluster learnt."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from isolated_env._drivers import _seams, redis_cluster
from isolated_env._servers._redis_cluster import LocalCluster


@pytest.fixture
def local(redis_cluster: LocalCluster) -> Iterator[LocalCluster]:
    yield redis_cluster  # the module's cluster, under a name that leaves ``redis_cluster`` to the driver


def test_installed_version_is_inside_the_tested_range() -> None:
    version = _seams.installed_version("redis")
    assert _seams.tested("redis", redis_cluster.TESTED), (
        f"redis {version} is outside {redis_cluster.TESTED!r}: check that RedisCluster.commands_parser is still "
        "an AsyncCommandsParser filled by initialize(), then widen TESTED in isolated_env/_drivers/redis_cluster.py"
    )


async def test_the_second_client_routes_by_the_first_clients_table(local: LocalCluster) -> None:
    from redis._parsers import AsyncCommandsParser

    shared: dict[str, object] = {}
    port, password = local.primaries[0], local.password
    first = redis_cluster.asyncio_cluster_client(commands=shared, host="127.0.0.1", port=port, password=password)
    second = redis_cluster.asyncio_cluster_client(commands=shared, host="127.0.0.1", port=port, password=password)
    try:
        await first.initialize()
        table = shared["table"]
        assert isinstance(first.commands_parser, AsyncCommandsParser)
        assert isinstance(table, dict) and "set" in table
        await second.initialize()
        assert second.commands_parser.commands is table  # not learnt again
        # and it routes with it: keys of three slots, each sent to the node that serves it
        for key in ("{a}k", "{b}k", "{c}k"):
            await second.set(key, key)
            assert await first.get(key) == key.encode()
        assert await second.delete("{a}k") == 1
    finally:
        await first.aclose()
        await second.aclose()

