"""Database mode: a private PostgreSQL database per test, cloned from a template and leased from
the warm pool (:mod:`.warm`); IntegreSQL's idea, done in-process.

A lease is a pop from a list of ready clones, kept by the process's background loop; the test's
loop only takes over the session parked for the clone. A released database is never handed out
again (it is dropped in the background, :func:`settle` waits for that). Every database carries
its owner in a comment (:mod:`.labels`); a failed test's database can be kept
(``keep_on_failure``, :mod:`.janitor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator

from ... import _metrics
from ..._background import call as in_background
from ..._background import submit
from ..._config import Settings
from ..._drivers import asyncpg as driver
from ..._pool import Pool
from ..._runtime import current_runtime
from ..._servers.postgres import PostgresServer
from .handle import Clone, DatabaseHandle, PostgresHandle
from .janitor import keep, reap_once
from .labels import server_key
from .leases import check as check_lease
from .nesting import settle_nested
from .roles import rails
from .templates import PostgresTemplate, as_template, build_template
from .warm import WarmPool, WarmPoolStatistics, warm_pool, warm_pools

__all__ = ["WarmPoolStatistics", "database_mode", "settle", "template_for_tests", "warm_pool_statistics"]


async def template_for_tests(server: PostgresServer, template: object) -> str:
    """The name of ``template``'s built database on ``server``, a build counted in the summary's
    figures (:mod:`isolated_env._advice`: builds that recur are worth pinning)."""
    build = await build_template(server, as_template(template))
    if build.built:
        _metrics.record_phase(_metrics.TEMPLATE_BUILDS, build.ms)
    return build.database


# The background loop's open warm pools, found from any loop and thread without a hop to it.
_open: dict[tuple[int, str, str, int], WarmPool] = {}


async def settle() -> None:
    """Wait until every database released so far has been dropped (releases drop in the
    background loop so that a test's teardown does not wait for ``DROP DATABASE``)."""
    async def settle_all() -> None:
        for warm in warm_pools(await current_runtime()):
            await warm.settle()

    await in_background(settle_all)


async def warm_pool_statistics() -> list[WarmPoolStatistics]:
    """Statistics of the process's warm pools (one per template and capacity)."""
    async def collect() -> list[WarmPoolStatistics]:
        return [warm.statistics() for warm in warm_pools(await current_runtime())]

    return await in_background(collect)



@contextlib.asynccontextmanager
async def database_mode(
    server: PostgresServer, settings: Settings, template: PostgresTemplate, *, keep_on_failure: bool,
    superuser: bool = False,
) -> AsyncIterator[PostgresHandle]:
    """A private database cloned from ``template``, leased from the warm pool; the test connects as
    the test role (:mod:`.roles`), or as ``server``'s own user with ``superuser=True``."""
    await reap_once(server, unlabelled=True)
    template_name = await template_for_tests(server, template)
    guard = await rails(server)
    tests = server if superuser else guard.tests
    scope = await current_runtime()

    async def warm_in_background() -> WarmPool:
        return await warm_pool(await current_runtime(), server, template, template_name, settings.capacity,
                               tests, guard.role)

    # The background loop is busy making clones: each call into it cost a lease 1.5-6 ms (more
    # under load) waiting for the GIL to come back, so the pool and a ready clone are found here.
    key = (os.getpid(), server_key(tests), template_name, settings.capacity)  # a forked child makes its own
    warm = _open.get(key)
    if warm is None or warm.closed:
        warm = _open[key] = await in_background(warm_in_background)

    async def take() -> Clone:
        with driver.translate(f"make a database from {warm.template_name} on", server):
            clone = warm.take_ready()
            if clone is None:  # none ready: the wait for a clone is what the summary counts
                with _metrics.phase(_metrics.CLONES):
                    clone = await in_background(warm.take)
            try:
                clone.conn = await driver.connect(clone.login or warm.login(clone.name), clone.name, reuse=True)
            except BaseException:
                await release(clone)
                raise
            # Woken once this loop next waits (in the test's first query), not now: waking the
            # background thread hands it the GIL, and the lease would wait for its slice.
            asyncio.get_running_loop().call_soon(warm.refill)
            return clone

    async def release(clone: Clone) -> None:
        session = None
        if clone.conn is not None:
            session = driver.detach(clone.conn)  # in this loop, which owns the connection
            clone.conn = None

        async def drop() -> None:
            if session is not None:
                driver.end_session(session)
            warm.release(clone)

        submit(drop)  # not waited for: the drop is the background's business

    pool = scope.pool(
        ("postgres-db", server_key(tests), template_name, settings.capacity),
        lambda: Pool(f"postgres databases ({template_name})", create=take, destroy=release,
                     capacity=settings.capacity, lease_timeout=settings.lease_timeout),
    )
    async with pool.lease() as lease:
        lease.discard()  # a used database is never handed out again
        clone = lease.value
        handle = DatabaseHandle(clone, clone.login or warm.login(clone.name), pool, warm.template_name,
                                keep_on_failure, admin=server, grant=guard.role,
                                closing=functools.partial(warm.closing_sql, clone.name))
        handle._ie_warm = warm  # type: ignore[attr-defined]  # how a nested scope clones it (.nesting)
        try:
            yield handle
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                await settle_nested(handle)
            if keep_on_failure and not isinstance(exc, GeneratorExit):
                exc.add_note(await keep(handle, f"{type(exc).__name__}: {exc}"))
            raise
        await settle_nested(handle)
        if keep_on_failure and handle.failed:
            await keep(handle, "the test failed")
        check_lease(handle.database)
