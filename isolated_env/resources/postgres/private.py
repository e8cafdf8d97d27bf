"""``isolated_postgres(superuser=True)`` on the embedded server: a PostgreSQL server of the test's
own, as its superuser, so what the guard rails refuse on the shared server (``ALTER SYSTEM``,
``pg_terminate_backend``, ``DROP DATABASE``, ``COPY … TO PROGRAM``…) reaches nothing but the
test's own server.

The server is started from the cached cluster (a copy, then a start: a few hundred ms), in
``<state dir>/private/``, and stopped with the test; its supervisor stops it if the process is
killed (:class:`~isolated_env._servers._private.Private`). The test gets a database made from its
template there, in either mode: commits are allowed (the server goes with the test), and
``env.reset()`` makes the database a fresh copy of the template again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread

from ..._config import Settings
from ..._drivers import asyncpg as driver
from ..._pool import Pool
from ..._servers import _private
from ..._servers import postgres as servers
from ..._servers.postgres import PostgresServer
from .handle import Clone, DatabaseHandle
from .labels import create_database
from .templates import PostgresTemplate, forget_template, template_database

__all__ = ["private_database"]

DATABASE = "ie_private"


@contextlib.asynccontextmanager
async def _private_server(settings: Settings) -> AsyncIterator[PostgresServer]:
    def start() -> _private.Private:
        return _private.Private.start("postgres", settings.state_dir,
                                      lambda directory: servers.PROVIDER.start(settings, directory),
                                      stop_signal=servers.PROVIDER.stop_signal)

    private = await anyio.to_thread.run_sync(start)
    try:
        # "private": not the shared server, so no guard rails are set up on it (nobody else is there)
        yield dataclasses.replace(servers.PROVIDER.view(private.state), source="private")
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(private.close)


@contextlib.asynccontextmanager
async def private_database(settings: Settings, template: PostgresTemplate | None) -> AsyncIterator[DatabaseHandle]:
    """A database made from ``template`` (an empty one by default) on a server of its own, as the
    server's superuser; the server is stopped on exit."""
    async with _private_server(settings) as server:
        source = "template1" if template is None else await template_database(server, template)
        try:
            async def create() -> Clone:
                admin = await driver.connect(server)
                try:
                    await create_database(admin, server, DATABASE, source, mode="private")
                finally:
                    await driver.close(admin)
                return Clone(DATABASE, await driver.connect(server, DATABASE))

            async def destroy(clone: Clone) -> None:
                clone.conn.terminate()  # the database goes with its server

            pool = Pool("postgres (a private server)", create=create, destroy=destroy, capacity=1,
                        lease_timeout=settings.lease_timeout)
            async with pool.lease() as lease:
                lease.discard()
                yield DatabaseHandle(lease.value, server, pool, source, False, admin=server)
        finally:
            if template is not None:
                forget_template(server, template)  # it went with its server
