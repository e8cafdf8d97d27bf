"""Per-event-loop state: the pools live as long as the loop that made them.

Drivers (asyncpg, redis.asyncio) bind connections to the event loop that opened them, so every
pool belongs to one loop. When the loop shuts down (``asyncio.run``, anyio's runner, trio's run),
its pools are closed inside it: a small async generator registered with the loop is finalized by
``shutdown_asyncgens`` and closes them while the loop can still run their cleanup.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from typing import Any, TypeVar

import anyio.lowlevel

from ._pool import Pool

__all__ = ["LoopScope", "current_scope"]

T = TypeVar("T")


def _loop_key() -> object:
    # The asyncio loop itself, or trio's token: one per running event loop.
    return anyio.lowlevel.current_token().native_token


class LoopScope:
    """Pools and other closeables bound to one running event loop."""

    def __init__(self) -> None:
        self.pools: dict[Hashable, Pool[Any]] = {}
        self.objects: dict[Hashable, Any] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._sentinel: AsyncGenerator[None, None] | None = None
        self.closed = False

    def pool(self, key: Hashable, make: Callable[[], Pool[T]]) -> Pool[T]:
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            pool = self.pools[key] = make()
        return pool

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def aclose(self) -> None:
        self.closed = True
        pools = list(self.pools.values())
        self.pools.clear()
        for pool in pools:
            await pool.aclose()
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:
                pass


_scopes: dict[int, tuple[object, LoopScope]] = {}


async def _sentinel(key: int, scope: LoopScope) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        _scopes.pop(key, None)
        await scope.aclose()


async def current_scope() -> LoopScope:
    """The LoopScope of the running event loop, created (and hooked to its shutdown) on first use."""
    loop = _loop_key()
    key = id(loop)
    entry = _scopes.get(key)
    if entry is not None and entry[0] is loop and not entry[1].closed:
        return entry[1]
    scope = LoopScope()
    _scopes[key] = (loop, scope)
    gen = _sentinel(key, scope)
    # The first step registers the generator with the loop's async-generator hooks, so the loop
    # finalizes it (running our cleanup) when it shuts down.
    await gen.__anext__()
    scope._sentinel = gen
    return scope


def open_scopes() -> list[LoopScope]:
    """Scopes of loops that have not shut down yet (for leak reports)."""
    return [scope for _loop, scope in _scopes.values() if not scope.closed]


async def close_current_scope() -> None:
    """Close the running loop's pools now (tests and scripts that want a clean slate)."""
    key = id(_loop_key())
    entry = _scopes.pop(key, None)
    if entry is not None:
        await entry[1].aclose()
        gen = entry[1]._sentinel
        if gen is not None:
            await gen.aclose()
