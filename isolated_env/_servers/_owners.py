"""Who owns a resource, in a form another process can check: host, pid and process start time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import psutil

from .._config import hostname

__all__ = ["USERS_LOCK", "hold_users_lock", "owner_alive", "owner_tag", "users_present"]


def owner_tag() -> dict[str, Any]:
    """Who owns a resource, in a form another process can check: host, pid and process start time."""
    return {"host": hostname(), "pid": os.getpid(), "ct": round(psutil.Process().create_time(), 2)}


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """True/False for an owner on this host; None when it lives on another host (can't tell)."""
    if owner.get("host") != hostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        ct = owner.get("ct")
        return ct is None or bool(abs(proc.create_time() - float(ct)) < 0.05)
    except psutil.Error:
        return False


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
