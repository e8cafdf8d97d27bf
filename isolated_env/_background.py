"""One asyncio loop in a daemon thread, shared by every event loop of the process, for work that
belongs to no test's loop: making and dropping database-mode clones ahead of demand.

pytest-asyncio gives each test a loop of its own; work kept in that loop (a refill, a drop) would
start again with every test and run while the test does. Here it runs once, off the test's loop:
a test's loop only awaits the result (:func:`call`) or hands work over without waiting
(:func:`submit`). Closed at session end or at exit, inside its loop, like any other loop's runtime.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["call", "close", "is_background", "running", "submit"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _start() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="isolated-env-background", daemon=True)
        thread.start()
        ready.wait()
        _loop, _thread = loop, thread
        atexit.unregister(close)
        atexit.register(close)  # again on each start: before the servers' own exit hook
        return loop


def running() -> bool:
    return _loop is not None and _thread is not None and _thread.is_alive()


def is_background() -> bool:
    """Whether the running loop is the background loop (then work runs in place, not handed over)."""
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def submit(fn: Callable[..., Awaitable[T]], *args: Any) -> concurrent.futures.Future[T]:
    """Start ``fn(*args)`` on the background loop; the future holds its outcome."""
    return asyncio.run_coroutine_threadsafe(_call(fn, *args), _start())


async def _call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await fn(*args)


async def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await fn(*args)`` on the background loop, from any loop (in place when already there)."""
    if is_background():
        return await fn(*args)
    return await asyncio.wrap_future(submit(fn, *args))


def close(timeout: float = 30.0) -> None:
    """Close the background loop's runtime (its pools, pending drops) inside it, then stop it."""
    global _loop, _thread
    with _lock:
        loop, thread, _loop, _thread = _loop, _thread, None, None
    if loop is None or thread is None or not thread.is_alive():
        return
    from ._runtime import close_current_runtime

    try:
        asyncio.run_coroutine_threadsafe(close_current_runtime(), loop).result(timeout)
    except Exception:  # a closer failed or overran: the loop is stopped anyway; the reaper takes the rest
        pass
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
    if not thread.is_alive():
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
