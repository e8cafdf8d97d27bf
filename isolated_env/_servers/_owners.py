"""Who owns a resource, in a form another process can check: host, pid and process start time."""

from __future__ import annotations

import os
from typing import Any

import psutil

from .._config import hostname

__all__ = ["owner_alive", "owner_tag"]


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
