"""The process's background event loop for synchronous callers: anyio's blocking portal, started
on first use and closed at exit (closing it closes every pool it holds, inside the loop)."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["call", "close", "portal"]

T = TypeVar("T")

_lock = threading.Lock()
_running: tuple[BlockingPortal, ExitStack] | None = None


def portal() -> BlockingPortal:
    """The process's background event loop (started on first use, closed at exit or by :func:`close`)."""
    global _running
    with _lock:
        if _running is None:
            stack = ExitStack()
            _running = (stack.enter_context(start_blocking_portal("asyncio")), stack)
        _close_last_at_exit()
        return _running[0]


def _close_last_at_exit() -> None:
    # Registered again on every use, so it runs before the servers' own exit hook (registered when
    # the first resource joined a server): the pools close while their servers are still up.
    atexit.unregister(close)
    atexit.register(close)


def close() -> None:
    """Stop the background loop: every pool it holds is closed with it. The next use starts a new one."""
    global _running
    with _lock:
        running, _running = _running, None
    if running is None:
        return
    bridge, stack = running
    try:
        # The loop's shutdown closes its runtime (pools, pending drops) inside it, as for asyncio.run.
        bridge.call(bridge.stop, True)  # a context left open (never exited) is cancelled, not waited for
    except RuntimeError:  # the loop already stopped on its own; the stack below joins its thread
        pass
    stack.close()


def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await fn(*args)`` on the background loop and return its result (for async APIs the
    sync handles do not wrap, e.g. ``call(db.handle.fetchval, "select 1")``)."""
    return portal().call(fn, *args)
