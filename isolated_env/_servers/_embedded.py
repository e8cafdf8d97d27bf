"""One kind of embedded server as this process sees it: joined once, answered from a cache, and
found dead when a test's connection fails.

Per test, the cache costs one ``poll`` of the server's pidfd (about 2 µs), which says whether
that very process has exited: a server that died between tests is forgotten and replaced before
the next test touches it. When something went wrong during a test (:meth:`Embedded.died`, called
by a resource whose test or cleanup failed) the recorded pid, its start time and identity are
checked; a dead server is forgotten, so the next environment starts (or joins) a new one, and the
test gets one :class:`~isolated_env.ServerDied` with the tail of the server's log. Listeners
(:meth:`Embedded.on_death`) drop what the event loop kept of a dead server (its pools).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

from .._config import Settings
from .._errors import ServerDied
from . import registry
from ._process import log_tail
from ._statefile import ServerState, inside

__all__ = ["Embedded"]

_log = logging.getLogger("isolated_env")

T = TypeVar("T")


class Embedded(Generic[T]):
    """One kind of embedded server as this process sees it: joined (or started) once per state
    directory through :func:`.registry.acquire`, then answered from a cache."""

    def __init__(
        self,
        kind: str,
        start: Callable[[Settings, Path], tuple[subprocess.Popen[bytes], dict[str, Any]]],
        view: Callable[[ServerState], T],
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        display: str | None = None,
    ) -> None:
        self.kind = kind
        self.display = display or kind
        self._start = start
        self._view = view
        self._stop_signal = stop_signal
        self._lock = threading.Lock()
        self._cache: dict[str, T] = {}
        self._states: dict[str, ServerState] = {}
        self._dead: dict[int, tuple[ServerState, str]] = {}  # id(view) -> (its state, how it died)
        self._dead_views: list[T] = []  # keeps the ids above from being reused
        self._exits: dict[str, tuple[int, select.poll]] = {}  # state dir -> the server's pidfd, polled
        self._listeners: list[Callable[[T], Awaitable[None]]] = []
        registry.on_release_all(self.forget)

    def on_death(self, listener: Callable[[T], Awaitable[None]]) -> None:
        """Await ``listener(view)`` in the event loop that finds the server of ``view`` dead."""
        self._listeners.append(listener)

    def cached(self, settings: Settings) -> T | None:
        return self._cache.get(str(settings.state_dir))

    def join(self, settings: Settings) -> T:
        """Blocking: start or join the server and register this process as a user."""
        key = str(settings.state_dir)
        with self._lock:
            server = self._cache.get(key)
            if server is None:
                state = registry.acquire(
                    self.kind, settings.state_dir, lambda d: self._start(settings, d), stop_signal=self._stop_signal
                )
                server = self._cache[key] = self._view(state)
                self._states[key] = state
                self._watch(key, state.pid)
            return server

    def _watch(self, key: str, pid: int) -> None:
        self._unwatch(key)
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # an old kernel: deaths are found on the failing path only
            return
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._exits[key] = (fd, poller)

    def _unwatch(self, key: str) -> None:
        exit_ = self._exits.pop(key, None)
        if exit_ is not None:
            os.close(exit_[0])

    def keep_up(self, settings: Settings) -> ServerState:
        """Blocking: start the server if needed and pin it (``isolated-env up``)."""
        return registry.acquire(
            self.kind, settings.state_dir, lambda d: self._start(settings, d), pin=True, stop_signal=self._stop_signal
        )

    async def ensure(self, settings: Settings) -> T:
        key = str(settings.state_dir)
        cached = self._cache.get(key)
        if cached is not None:
            exit_ = self._exits.get(key)
            if exit_ is None or not exit_[1].poll(0):
                return cached
            # It died between tests: nobody was using it, so nobody gets an error; a new one starts.
            if self.died(cached) is not None:
                for listener in self._listeners:
                    await listener(cached)
        from .. import _metrics  # loaded by then: a resource is being set up

        with _metrics.phase(_metrics.SERVER_STARTS):
            return await anyio.to_thread.run_sync(self.join, settings)

    def died(self, server: T) -> ServerDied | None:
        """The error for a test whose embedded ``server`` is dead, or None while it runs (or when
        it is not an embedded server of this process). A dead server is forgotten: the next
        :meth:`ensure` starts a new one."""
        with self._lock:
            dead = self._dead.get(id(server))
            if dead is None:
                key = next((k for k, v in self._cache.items() if v is server), None)
                if key is None:
                    return None
                state = self._states[key]
                if state.server_alive():
                    return None
                del self._cache[key], self._states[key]
                self._unwatch(key)
                dead = self._dead[id(server)] = (state, _how(state))
                self._dead_views.append(server)
                _log.warning("isolated_env: the embedded %s server (pid %d) died %s; the next environment starts "
                             "a new one", self.kind, state.pid, dead[1])
        state, how = dead
        log = state.info.get("log")
        directory = state.directory
        readable = isinstance(log, str) and directory is not None and inside(directory.parent, Path(log))
        tail = log_tail(Path(log)) if readable else "(no log recorded)"  # type: ignore[arg-type]
        return ServerDied(self.display, pid=state.pid, how=how, log=str(log), log_tail=tail)

    def forget(self) -> None:
        """Drop the cached views (after the registry released the server)."""
        with self._lock:
            self._cache.clear()
            self._states.clear()
            for key in list(self._exits):
                self._unwatch(key)


def _how(state: ServerState) -> str:
    proc = registry.child(state.pid)
    if proc is None:
        return "(how is unknown: another process started it)"
    try:
        code = proc.wait(timeout=2)  # it may still be on its way out
    except subprocess.TimeoutExpired:
        return "(it no longer answers as our server)"
    if code < 0:
        try:
            return f"(killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"(killed by signal {-code})"
    return f"(exit code {code})"
