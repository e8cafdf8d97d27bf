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


class BackgroundAdmin:
    """What a slot's ``admin`` needs (``flushdb``, ``aclose``), answered on the background loop."""

    def __init__(self, server: RedisServer, db: int) -> None:
        self.server, self.db = server, db

    async def flushdb(self) -> Any:
        return await _background.call(_flushdb, self.server, self.db)

    async def aclose(self) -> None:
        """Nothing of this loop's to close: the client is the background loop's, for the next loop too."""
