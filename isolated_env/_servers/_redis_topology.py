"""What a Redis server offers for isolation: is it a cluster, and how many databases may be used.

A Redis Cluster serves database 0 only; so do many managed servers (``databases 1``, or ``SELECT``
refused). On those, :func:`~isolated_env.isolated_redis` isolates tests by key prefix instead of
by database (see :mod:`..resources._redis_prefix`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["cluster_and_databases"]


async def cluster_and_databases(client: Any) -> tuple[bool, int]:
    """``(cluster, databases)`` of the server ``client`` (an asyncio admin client) reaches."""
    from redis.exceptions import RedisError, ResponseError

    try:
        cluster = bool(int((await client.info("cluster")).get("cluster_enabled") or 0))
    except ResponseError:  # a server too old, or a proxy, that has no such section
        cluster = False
    if cluster:
        return True, 1
    try:
        return False, int((await client.config_get("databases")).get("databases") or 16)
    except RedisError:  # managed servers often forbid CONFIG: ask whether database 1 exists
        pass
    try:
        await client.execute_command("SELECT", 1)
    except ResponseError:  # "DB index is out of range", or SELECT refused: database 0 only
        return False, 1
    await client.execute_command("SELECT", 0)
    return False, 16  # the default; a lease waits when there are fewer
