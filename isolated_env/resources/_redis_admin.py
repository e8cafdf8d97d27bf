"""isolated_redis(admin=True): a Redis server of the test's own, where every command is allowed.

For tests that need what the guard rails refuse on the shared server (``SELECT``, ``SWAPDB``,
``FLUSHALL``, ``CONFIG SET``, keyspace notifications, ...): the test
gets the admin user of a private server started for it (~35 ms) and stopped with it, so nothing it
does can reach another test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
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


def _stop(proc: subprocess.Popen[bytes], directory: str) -> None:
    try:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@resource("redis", provider="redis", extra="redis")
async def admin_redis() -> AsyncIterator[RedisHandle]:
    """Database 0 of a private Redis server, as its admin user; the server is stopped on exit."""
    from .redis import RedisHandle, _Slot

    settings = current_settings()
    base = settings.state_dir / "redis-admin"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="a-", dir=base)  # short: the socket path must fit 107 bytes
    try:
        proc, server = await anyio.to_thread.run_sync(servers.start_private, settings, Path(directory))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    try:
        client = redis_driver.asyncio_client(**server.client_kwargs(0))
        try:
            yield RedisHandle(_Slot(server, 0, client))
        finally:
            await client.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, proc, directory)
