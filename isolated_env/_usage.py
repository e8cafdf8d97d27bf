"""Callbacks run just before this process sets up its first resource.

The pytest plugin takes its leak-check baseline in one, so a run that never uses a resource never
imports the metrics (and psutil) at all; and a baseline taken then is not skewed by what earlier
tests that used no resource left behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["before_first_use", "entering", "forget"]

_lock = threading.Lock()
_waiting: list[Callable[[], None]] = []
_used = [False]


def before_first_use(callback: Callable[[], None]) -> None:
    """Run ``callback`` before the first resource of this process is set up (now, if one was)."""
    with _lock:
        if not _used[0]:
            _waiting.append(callback)
            return
    callback()


def entering() -> None:
    """A resource is about to be set up (called by every ResourceContext)."""
    if _used[0]:
        return
    with _lock:
        _used[0] = True
        callbacks, _waiting[:] = list(_waiting), []
    for callback in callbacks:
        callback()


def forget(callback: Callable[[], None]) -> None:
    """Drop ``callback`` if it has not run (a pytest session ended without using a resource)."""
    with _lock:
        if callback in _waiting:
            _waiting.remove(callback)
