"""isolated_redis(admin=True): a Redis server of the test's own, where every command is allowed.

For tests that need what the guard rails refuse on the shared server (``SELECT``, ``SWAPDB``,
``FLUSHALL``, ``CONFIG SET``, keyspace notifications, ...): the test
gets the admin user of a private server started for it (~35 ms) and stopped with it, so nothing it
does can reach another test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .._contract import current_settings
from .._drivers import redis as redis_driver
from .._resource import resource
from .._servers import redis as servers

if TYPE_CHECKING:
    from .redis import RedisHandle

__all__ = ["admin_redis"]


@resource("redis", provider="redis", extra="redis")
async def admin_redis() -> AsyncIterator[RedisHandle]:
    """Database 0 of a private Redis server, as its admin user; the server is stopped on exit (by
    its supervisor, within ISOLATED_ENV_REAP_AFTER seconds, if this process is killed)."""
    from .redis import RedisHandle, _Slot

    private, server = await anyio.to_thread.run_sync(servers.start_private, current_settings())
    try:
        slot = _Slot(server, 0, redis_driver.asyncio_client(**server.client_kwargs(0)))
        try:
            yield RedisHandle(slot)
        finally:
            await slot.close_clients()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(private.close)
