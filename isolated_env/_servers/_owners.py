"""Who uses a server, as the kernel sees it (owners of resources are :mod:`isolated_env._ownership`)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["USERS_LOCK", "hold_users_lock", "users_present"]


# -- users of a server, as the kernel sees them ----------------------------------------------
# Each process that uses a server holds a shared flock on ``<server dir>/users.lock`` for as long as
# it does. The kernel drops the lock when the process dies, however it dies (SIGKILL included), so
# "no live user" is one non-blocking exclusive try, with no pid table to trust.

USERS_LOCK = "users.lock"


def hold_users_lock(server_dir: Path) -> int | None:
    """Join the users of the server in ``server_dir``: the descriptor holding the shared lock
    (close it to leave), or None when the directory is gone."""
    from ._statefile import open_lock

    try:
        fd = open_lock(server_dir / USERS_LOCK)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def users_present(server_dir: Path) -> bool:
    """Whether any live process holds the users lock of ``server_dir`` (False when it is gone)."""
    try:
        fd = os.open(server_dir / USERS_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the exclusive lock just taken
    return False
