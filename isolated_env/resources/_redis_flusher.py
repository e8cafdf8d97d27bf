"""The admin side of a Redis slot that a short-lived event loop takes over (pytest-asyncio's loop
per test): its flushes go through one admin client per database kept on the background loop
(:mod:`isolated_env._background`), which lives for the whole run, instead of a client opened in
every test's loop (a connection, ``AUTH``, ``CLIENT SETINFO`` and ``SELECT`` for each test).

It is still the admin user's own connection to that database, apart from the test's clients, so
nothing a test did to its connections can point the flush elsewhere.
"""

from __future__ import annotations

from typing import Any

from .. import _background
from .._drivers import redis as redis_driver
from .._runtime import current_runtime
from .._servers.redis import RedisServer

__all__ = ["BackgroundAdmin"]


async def _client(server: RedisServer, db: int) -> Any:
    runtime = await current_runtime()  # the background loop's: closed with it, at session end
    key = ("redis-admin", server.key, server.acl_secret, db)
    client = runtime.objects.get(key)
    if client is None:
        client = runtime.objects[key] = redis_driver.asyncio_client(**server.client_kwargs(db))
        runtime.on_close(client.aclose)
    return client


async def _flushdb(server: RedisServer, db: int) -> Any:
    return await (await _client(server, db)).flushdb()


async def _copy_keys(server: RedisServer, db: int, target_db: int) -> int:
    from ._redis_nest import copy_keys

    return await copy_keys(await _client(server, db), target_db)


class BackgroundAdmin:
    """What a slot's ``admin`` needs (``flushdb``, ``copy_keys``, ``aclose``), answered on the background loop."""

    def __init__(self, server: RedisServer, db: int) -> None:
        self.server, self.db = server, db

    async def flushdb(self) -> Any:
        return await _background.call(_flushdb, self.server, self.db)

    async def copy_keys(self, target_db: int) -> int:
        """Copy every key of this database into ``target_db`` (a nested scope's, :mod:`._redis_nest`)."""
        copied: int = await _background.call(_copy_keys, self.server, self.db, target_db)
        return copied

    async def aclose(self) -> None:
        """Nothing of this loop's to close: the client is the background loop's, for the next loop too."""
