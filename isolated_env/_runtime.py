"""Per-event-loop state: the pools, and a task group for background work, live as long as the loop.

Drivers (asyncpg, redis.asyncio) bind connections to the event loop that opened them, so every
pool belongs to one loop's :class:`Runtime`. When the loop shuts down (``asyncio.run``, anyio's
runner, trio's run), its runtime is closed inside it: a small async generator registered with the
loop is finalized by ``shutdown_asyncgens`` and closes the pools while the loop can still run their
cleanup. Background work (warm-pool refills, deferred drops, heartbeats) runs in the runtime's task
group, never as a stray task: its failures are logged and handed to the callback that asked for it,
so they reach the test they concern.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from ._pool import Pool

__all__ = ["Runtime", "close_current_runtime", "current_runtime", "has_runtime", "open_runtimes"]

T = TypeVar("T")
log = logging.getLogger("isolated_env")

_SETTLE_ON_CLOSE_S = 10.0
_CLOSE_S = 10.0  # pools and closers, together
_DROP_S = 5.0


def _loop_key() -> object:
    # The asyncio loop itself, or trio's token: one per running event loop. anyio < 4.11 returns
    # that object itself; later versions wrap it in an EventLoopToken.
    token = anyio.lowlevel.current_token()
    return getattr(token, "native_token", token)


class Runtime:
    """Pools, closeables and background tasks bound to one running event loop."""

    def __init__(self) -> None:
        self.pools: dict[Hashable, Pool[Any]] = {}
        self.objects: dict[Hashable, Any] = {}
        self.errors: list[BaseException] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._sentinel: AsyncGenerator[None, None] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._host_done: anyio.Event | None = None
        self._host_started: anyio.Event | None = None
        self._running = 0
        self._idle = anyio.Event()
        self._idle.set()
        self.closed = False

    # -- pools and closeables -----------------------------------------------------------------

    def pool(
        self, key: Hashable, make: Callable[[], Pool[T]], on_close: Callable[[], Awaitable[None]] | None = None
    ) -> Pool[T]:
        """The pool filed under ``key``, made (and ``on_close`` registered) on first use."""
        pool = self.pools.get(key)
        if pool is None or pool.closed:
            pool = self.pools[key] = make()
            if on_close is not None:
                self.on_close(on_close)
        return pool

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(closer)

    async def drop(self, token: str) -> None:
        """Close and forget every pool and object filed under a key naming ``token`` (all that
        was bound to a server that died): none of its dead connections is handed out again.
        Closing talks to a dead server, so it is bounded and its failures do not matter."""

        def names(key: Hashable) -> bool:
            return key == token or (isinstance(key, tuple) and token in key)

        closing: list[Callable[[], Awaitable[None]]] = []
        for key in [k for k in self.pools if names(k)]:
            closing.append(self.pools.pop(key).aclose)
        for key in [k for k in self.objects if names(k)]:
            close = getattr(self.objects.pop(key), "aclose", None)
            if close is not None:
                closing.append(close)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_DROP_S):
            for close in closing:
                try:
                    await close()
                except Exception as exc:  # the server is gone: what its connections say about it is moot
                    log.debug("isolated_env: closing %r of a dead server failed: %r", close, exc)

    # -- background work ----------------------------------------------------------------------

    async def _host(self, started: anyio.Event) -> None:
        done = self._host_done = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                started.set()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._host_started = None
            done.set()

    async def _ensure_host(self) -> anyio.abc.TaskGroup:
        if self._tg is not None:
            return self._tg
        # Callers racing on a new runtime wait for one host: a second host would replace the
        # first's task group, whose tasks closing would then never stop.
        started = self._host_started
        if started is None:
            started = self._host_started = anyio.Event()
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio: trio
                import trio

                trio.lowlevel.spawn_system_task(self._host, started)
            else:
                # Held by the runtime; cancelled by aclose() or by the loop's own shutdown.
                self._host_task = loop.create_task(self._host(started), name="isolated-env-runtime")
        await started.wait()
        assert self._tg is not None
        return self._tg

    async def spawn(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        name: str,
        on_error: Callable[[BaseException], None] | None = None,
        daemon: bool = False,
    ) -> None:
        """Run ``fn(*args)`` in the background of this loop. A failure is logged, kept in
        ``errors`` and passed to ``on_error`` (which should make the test it concerns fail).

        A ``daemon`` is a loop that never finishes on its own (a refill worker): :meth:`settle` and
        closing do not wait for it, closing cancels it."""
        if self.closed:
            raise RuntimeError("the isolated_env runtime of this event loop is closed")
        tg = await self._ensure_host()
        if not daemon:
            self._running += 1
            self._idle = anyio.Event() if self._idle.is_set() else self._idle

        async def run() -> None:
            try:
                await fn(*args)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                log.warning("isolated_env background task %s failed: %r", name, exc, exc_info=exc)
                self.errors.append(exc)
                if on_error is not None:
                    on_error(exc)
            finally:
                if not daemon:
                    self._running -= 1
                    if self._running == 0:
                        self._idle.set()

        tg.start_soon(run, name=name)

    async def settle(self) -> None:
        """Wait until no background task of this loop is running (daemons aside)."""
        while self._running:
            await self._idle.wait()

    # -- shutdown ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        self.closed = True
        with anyio.move_on_after(_SETTLE_ON_CLOSE_S):
            await self.settle()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            if self._host_done is not None:
                await self._host_done.wait()
        # One bound for all of it: a server gone silent costs the closing loop seconds, not a
        # reset timeout per pooled instance (minutes, with a session's pools).
        deadline = anyio.current_time() + _CLOSE_S
        pools = list(self.pools.values())
        self.pools.clear()
        for pool in pools:
            await pool.aclose(deadline=deadline)
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            with anyio.CancelScope(shield=True, deadline=deadline) as bound:
                try:
                    await closer()
                except Exception as exc:  # one closer failing must not keep the others from running
                    log.debug("isolated_env: closing %r failed: %r", closer, exc)
            if bound.cancelled_caught:
                log.warning("isolated_env: closing %r took too long; let go", closer)


_runtimes: dict[int, tuple[object, Runtime]] = {}


async def _sentinel(key: int, runtime: Runtime) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        _runtimes.pop(key, None)
        await runtime.aclose()


async def current_runtime() -> Runtime:
    """The Runtime of the running event loop, created (and hooked to its shutdown) on first use."""
    loop = _loop_key()
    key = id(loop)
    entry = _runtimes.get(key)
    if entry is not None and entry[0] is loop and not entry[1].closed:
        return entry[1]
    runtime = Runtime()
    _runtimes[key] = (loop, runtime)
    gen = _sentinel(key, runtime)
    # The first step registers the generator with the loop's async-generator hooks, so the loop
    # finalizes it (running our cleanup) when it shuts down.
    await gen.__anext__()
    runtime._sentinel = gen
    return runtime


def has_runtime(native_loop: object) -> bool:
    """Whether ``native_loop`` (an asyncio loop, or trio's token) has an open Runtime."""
    entry = _runtimes.get(id(native_loop))
    return entry is not None and entry[0] is native_loop and not entry[1].closed


def open_runtimes() -> list[Runtime]:
    """Runtimes of loops that have not shut down yet (for leak reports)."""
    return [runtime for _loop, runtime in _runtimes.values() if not runtime.closed]


async def close_current_runtime() -> None:
    """Close the running loop's pools now (tests and scripts that want a clean slate)."""
    key = id(_loop_key())
    entry = _runtimes.pop(key, None)
    if entry is not None:
        await entry[1].aclose()
        gen = entry[1]._sentinel
        if gen is not None:
            await gen.aclose()

