"""Nested scopes of isolated_redis(): each test gets a database of its own holding a copy of its
class's keys (``COPY key key DB n``, TTLs kept), flushed when the test ends; the class's own
database is only read, so it is left as it was."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .._drivers import redis as redis_driver
from .._resource import ResourceContext

if TYPE_CHECKING:
    from .redis import RedisHandle, RedisResource

__all__ = ["nested_database"]

_BATCH = 500


async def copy_keys(source: Any, target_db: int) -> int:
    """Copy every key of ``source``'s database into database ``target_db``; returns how many."""
    copied = 0
    batch: list[Any] = []

    async def flush() -> None:
        nonlocal copied
        pipe = source.pipeline(transaction=False)
        for key in batch:
            pipe.execute_command("COPY", key, key, "DB", target_db, "REPLACE")
        await pipe.execute()
        copied += len(batch)
        batch.clear()

    async for key in source.scan_iter(count=_BATCH):
        batch.append(key)
        if len(batch) >= _BATCH:
            await flush()
    if batch:
        await flush()
    return copied


@asynccontextmanager
async def nested_database(resource: RedisResource, handle: RedisHandle) -> AsyncIterator[RedisHandle]:
    """A database of the test's own, leased as any other, filled with a copy of ``handle``'s keys."""
    lease = resource._lease
    if lease is None:
        raise RuntimeError("isolated_redis: nested() of a handle that is not leased")
    source = lease.value.admin  # ours, bound to the class's database: the test's client cannot COPY across
    fresh = copy.copy(resource)
    fresh._lease = fresh._pool = None
    async with ResourceContext(fresh) as inner:
        with redis_driver.translate(f"copying the keys of database {handle.db} into database {inner.db}"):
            if hasattr(source, "copy_keys"):  # a slot taken over from another loop: its admin is the background's
                await source.copy_keys(inner.db)
            else:
                await copy_keys(source, inner.db)
        yield inner
