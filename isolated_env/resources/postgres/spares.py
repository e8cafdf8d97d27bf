"""What the warm pools of a process share across event loops: the names of the clones they make,
the clean clones nobody leased (no connection open), handed to the next pool of the same
template, and the shape of a pool's statistics."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import threading

from ..._config import run_id
from ..._servers.postgres import PostgresServer
from .labels import CLONE_PREFIX, own

__all__ = ["WarmPoolStatistics", "new_name", "put_spares", "take_spare"]

_lock = threading.Lock()
_spares: dict[tuple[int, str, str], list[str]] = collections.defaultdict(list)
_counter = itertools.count(1)


def new_name(server: PostgresServer) -> str:
    """A new clone's name, owned by this process (dropped at exit if nothing drops it sooner)."""
    name = f"{CLONE_PREFIX}{run_id()}_{os.getpid()}_{next(_counter)}"
    own(name, server)
    return name


def take_spare(key: tuple[int, str, str]) -> str | None:
    """A clean clone made by an earlier pool of ``key`` (pid, server, template), or None."""
    with _lock:
        spares = _spares.get(key)
        return spares.pop() if spares else None


def put_spares(key: tuple[int, str, str], names: list[str]) -> None:
    """Clean clones a closing pool made and nobody leased, for the next pool of ``key``."""
    with _lock:
        _spares[key].extend(names)


@dataclasses.dataclass(frozen=True)
class WarmPoolStatistics:
    """A snapshot of one warm pool; times in milliseconds."""

    template: str
    target: int  # ready clones wanted now: observed demand within bounds (:mod:`isolated_env._demand`)
    capacity: int
    ready: int
    peak_ready: int
    in_flight: int
    clones: int
    reused_spares: int
    clone_p50_ms: float
    clone_p95_ms: float
    drops: int
    pending_drops: int
    starved: int  # leases that found no ready clone and waited for one
    errors: int
