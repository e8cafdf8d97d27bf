"""Finding a server whose state file cannot be trusted, and the servers nobody's state names.

A state file can be truncated (a disk full, a killed writer of an older version) or planted. It is
then never acted on; instead the kind's server is looked for where only we write: each server
directory holds the state as started (``server.json``) and, while ``isolated-env up`` pins it, a
``pinned`` marker. A live server found there is adopted (the state file is written again from it),
so ``isolated-env status`` and ``down`` see it; a server process that still works in a directory of
the state dir but is named by no state (no ``server.json`` to vouch for it) is an orphan, and
stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import psutil

from ._process import naming
from ._statefile import CorruptState, ServerState, read_state, write_state
from ._supervisor import PINNED, SERVER_FILE

__all__ = ["adopt", "load", "orphans", "stop_orphans"]

_log = logging.getLogger("isolated_env")


def load(root: Path, kind: str) -> ServerState | None:
    """The state of ``kind`` in ``root`` (call it under the kind's lock). A file that cannot be
    trusted is reported, and replaced by the state of the live server found in a server directory
    (or removed when there is none)."""
    statefile = root / f"{kind}.json"
    try:
        state = read_state(statefile, kind)
    except CorruptState as exc:
        _log.warning("isolated_env: the state file %s cannot be trusted (%s); looking for its server", statefile, exc)
        state = adopt(root, kind)
        if state is None:
            statefile.unlink(missing_ok=True)
        else:
            _log.warning("isolated_env: adopted the running %s server (pid %d) in %s; the state file is written "
                         "again", kind, state.pid, state.info.get("dir"))
            write_state(statefile, state.to_json())
        return state
    if state is not None and state.directory is not None:
        state.pinned = state.pinned or (state.directory / PINNED).exists()
    return state


def adopt(root: Path, kind: str) -> ServerState | None:
    """The live server of ``kind`` that a server directory of ``root`` vouches for; orphans (live
    server processes in other directories) are stopped."""
    found: ServerState | None = None
    for directory in sorted(root.glob(f"{kind}-*")):
        if directory.is_symlink() or not directory.is_dir():
            continue
        try:
            state = read_state(directory / SERVER_FILE, kind, root=root)
        except CorruptState:
            continue
        if state is None or state.directory != directory or not state.server_alive():
            continue
        state.pinned = (directory / PINNED).exists()
        if found is None or state.create_time > found.create_time:
            found = state
    stop_orphans(root, kind, keep=found.pid if found is not None else None)
    return found


def orphans(root: Path, kind: str, keep: int | None = None) -> list[psutil.Process]:
    """Processes of ours (or of the unprivileged server user) whose command line names a server
    directory of ``kind`` in ``root``, but the server ``keep`` and the supervisors."""
    prefix = str(root / f"{kind}-")
    mine = {os.getuid()}
    for directory in root.glob(f"{kind}-*"):  # the server user (PostgreSQL's, when we are root)
        with contextlib.suppress(OSError):
            mine.add(directory.lstat().st_uid)
    found = []
    for proc in naming(prefix):
        cmdline = proc.info["cmdline"]
        if proc.pid in (keep, os.getpid()) or any("_servers._supervisor" in arg for arg in cmdline):
            continue  # a supervisor exits with its server
        uids = proc.info["uids"]
        if (uids.real if uids else -1) in mine:
            found.append(proc)
    return found


def stop_orphans(root: Path, kind: str, keep: int | None = None) -> list[int]:
    """Stop :func:`orphans` (SIGTERM, SIGKILL after 5 s); their pids."""
    procs = orphans(root, kind, keep)
    for proc in procs:
        _log.warning("isolated_env: stopping pid %d, a %s server no state file names: %s",
                     proc.pid, kind, " ".join(proc.info.get("cmdline") or [])[:200])
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]
