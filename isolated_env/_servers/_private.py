"""A server of one user's own, started and supervised as the registry's shared ones are, but not
shared: :class:`Private`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from . import registry
from ._owners import hold_users_lock
from ._statefile import ServerState

__all__ = ["Private"]


class Private:
    """A server of one user's own (``isolated_redis(admin=True)``, ``isolated_postgres(superuser=True)``)
    in a fresh ``<state dir>/private/<kind>-…`` (outside the shared ``<kind>-*`` names, so no reaper
    takes it for a leftover). Supervised like a shared server: this process holds its users lock, so
    if it dies (SIGKILL too) the server stops within ``ISOLATED_ENV_REAP_AFTER``; ``close()`` at once."""

    def __init__(self, state: ServerState, users_fd: int | None) -> None:
        self.state = state
        self._users_fd = users_fd

    @classmethod
    def start(cls, kind: str, state_dir: Path, start: registry.StartFn, *,
              stop_signal: signal.Signals = signal.SIGTERM) -> Private:
        """Blocking: start a private server of ``kind`` with ``start`` (as :func:`.registry.acquire` would)."""
        root = registry.state_root(state_dir) / "private"
        root.mkdir(exist_ok=True)
        root.chmod(0o711)  # as the state dir: an unprivileged server user (PostgreSQL's) traverses it
        with registry._local:
            registry._collect_spawners()
        state = registry._start(kind, root, start, stop_signal, private=True)
        directory = state.directory
        fd = hold_users_lock(directory) if directory is not None else None
        if fd is None:  # its directory vanished under us: nothing to supervise, so nothing may run
            registry.stop(state)
        return cls(state, fd)

    def close(self) -> None:
        """Blocking: stop the server, remove its directory, leave its users."""
        try:
            registry.stop(self.state)
        finally:
            if self._users_fd is not None:
                os.close(self._users_fd)
                self._users_fd = None
            with registry._local:
                registry._collect_spawners()
