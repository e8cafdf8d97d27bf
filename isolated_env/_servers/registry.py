"""Cross-process sharing of embedded servers.

One server per kind and machine, shared by every process that wants it (pytest-xdist workers,
two concurrent runs): a file lock serialises start and stop, a JSON state file says where the
server is, and each user holds a shared lock on the server's ``users.lock`` for as long as it uses
it (the kernel drops it when the user dies, SIGKILL included). The last user to leave stops the
server; when every user was killed, the server's supervisor (:mod:`._supervisor`) stops it. A state
file whose server is dead is replaced; one that cannot be trusted is never acted on, and its server
is found again (:mod:`._recover`). ``isolated-env up`` pins a server so it outlives its users.

Nothing here knows a kind of server: how to start one, stop one and read its state comes from the
kind's provider (:mod:`._provider`); the stop signal it asks for is recorded in the state file, so
``isolated-env down`` in a fresh process stops the server the way its provider wants.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from .._checks import checked_private_dir
from .._ownership import dead, me
from . import _diagnostics, _supervisor
from ._owners import hold_users_lock, users_present
from ._process import poll_until
from ._recover import adopt, load, stop_orphans
from ._statefile import CorruptState, ServerState, file_lock, read_state, remove_server_dir, write_state

__all__ = ["ServerState", "acquire", "file_lock", "pin", "reap", "release", "release_all", "state_root",
           "status", "stop"]

_log = logging.getLogger("isolated_env")


StartFn = Callable[[Path], tuple[subprocess.Popen[bytes], dict[str, Any]]]
"""Starts a server in the given fresh directory; returns the process and connection info."""

_local = threading.Lock()
_kind_locks: dict[tuple[str, str], threading.Lock] = {}
_held: dict[tuple[str, str], ServerState] = {}
_user_locks: dict[tuple[str, str], tuple[str, int]] = {}  # (kind, root) -> (server dir, users.lock fd)
_children: dict[int, subprocess.Popen[bytes]] = {}
_spawners: list[subprocess.Popen[bytes]] = []  # supervisor launchers, collected once they exit
_on_release_all: list[Callable[[], None]] = []
_atexit_registered = False


def _disown_servers() -> None:
    """At exit, after :func:`release_all`: a server left running (other users, a pin, its supervisor's
    grace) is no child anyone here waits for; Python must not report it as leaked at shutdown."""
    for proc in _children.values():
        if proc.poll() is None:
            proc.returncode = 0  # not its exit status: nobody here waits for it any more
    _children.clear()


atexit.register(_disown_servers)


def state_root(state_dir: Path) -> Path:
    """``state_dir``, created 0711 if missing; a ConfigError unless this user alone owns and writes it."""
    return checked_private_dir(state_dir, "ISOLATED_ENV_STATE_DIR")


def child(pid: int) -> subprocess.Popen[bytes] | None:
    """The Popen of a server this process started (to read how it exited), if it did."""
    return _children.get(pid)


def acquire(
    kind: str,
    state_dir: Path,
    start: StartFn,
    *,
    pin: bool = False,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> ServerState:
    """The running server of ``kind`` (started if needed), with this process registered as a user.

    Blocking: call it from a worker thread. Idempotent per process. A server started here records
    ``stop_signal``, which :func:`stop` sends when its last user leaves.
    """
    global _atexit_registered
    root = state_root(state_dir)
    key = (kind, str(root))
    with _local:
        if not _atexit_registered:
            # Registered by the first join, not at import: importing the package starts nothing and
            # so has nothing to leave.
            atexit.register(release_all)
            _atexit_registered = True
        _collect_spawners()
    # One start or join per kind at a time, and kinds in parallel (the pytest plugin starts a run's
    # servers together): the lock of a kind is taken before ``_local`` and the kind's file lock,
    # and ``_local`` is not taken under the file lock.
    with _kind_lock(key):
        held = _held.get(key)
        if held is not None and held.server_alive() and not pin:
            return held
        statefile = root / f"{kind}.json"
        with file_lock(root / f"{kind}.lock"):
            state = load(root, kind)
            if state is not None and not state.server_alive():
                _collect(state)
                remove_server_dir(state)
                _diagnostics.reaped(kind, [state.info.get("dir", str(statefile))],
                                    f"its server (pid {state.pid}) is no longer running; starting a new one")
                state = None
            if state is None:
                state = _start(kind, root, start, stop_signal)
            else:
                state.reused = True
                _diagnostics.joined(kind, state.pid, state.info)
            mine = me().as_dict()
            state.users = [u for u in state.users if not dead(u) and u != mine]
            directory = state.directory
            if pin:
                state.pinned = True
                if directory is not None:
                    (directory / _supervisor.PINNED).touch()
            else:
                _join_users(key, state)
                state.users.append(mine)
            write_state(statefile, state.to_json())
        if not pin:
            _held[key] = state
        return state


def _start(kind: str, root: Path, start: StartFn, stop_signal: signal.Signals, *, private: bool = False) -> ServerState:
    grace = _supervisor.reap_after()  # a bad ISOLATED_ENV_REAP_AFTER fails before anything starts
    if private:  # several at once in one process: a name of its own, never one to clear first
        server_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    else:
        server_dir = root / f"{kind}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        shutil.rmtree(server_dir, ignore_errors=True)
        server_dir.mkdir(parents=True)
    os.chmod(server_dir, 0o711)
    started = time.perf_counter()
    try:
        proc, info = start(server_dir)
    except BaseException:
        shutil.rmtree(server_dir, ignore_errors=True)
        raise
    _children[proc.pid] = proc
    info.setdefault("dir", str(server_dir))
    server = psutil.Process(proc.pid)
    with contextlib.suppress(psutil.Error):  # recorded so that a pid is only ever taken for this server
        info.setdefault("exe", server.exe())
    state = ServerState(
        kind=kind, pid=proc.pid, create_time=server.create_time(), info=info,
        startup_ms=(time.perf_counter() - started) * 1000, stop_signal=stop_signal.name,
    )
    write_state(server_dir / _supervisor.SERVER_FILE, state.to_json())
    _spawners.append(_supervisor.spawn(root, kind, server_dir, grace))
    _diagnostics.started(kind, state.pid, info, root, state.startup_ms)
    return state


def _kind_lock(key: tuple[str, str]) -> threading.Lock:
    with _local:
        return _kind_locks.setdefault(key, threading.Lock())


def _join_users(key: tuple[str, str], state: ServerState) -> None:
    directory = state.directory
    held = _user_locks.get(key)
    if held is not None:
        if directory is not None and held[0] == str(directory):
            return
        os.close(_user_locks.pop(key)[1])
    if directory is not None:
        fd = hold_users_lock(directory)
        if fd is not None:
            _user_locks[key] = (str(directory), fd)


def _leave_users(key: tuple[str, str]) -> None:
    held = _user_locks.pop(key, None)
    if held is not None:
        os.close(held[1])  # not LOCK_UN: a forked child sharing the descriptor stays a user


def _collect(state: ServerState) -> None:
    proc = _children.pop(state.pid, None)
    if proc is not None:
        proc.poll()  # collect the exit status of our own dead child


def _collect_spawners(wait: float = 0.0) -> None:
    """Collect the supervisor launchers that exited (each exits once it forked its supervisor off);
    with ``wait``, wait that long for each one still starting."""
    for proc in list(_spawners):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait) if wait else proc.poll()
    for proc in [p for p in _spawners if p.returncode is not None]:
        _spawners.remove(proc)  # not a rebuilt list: a start in another thread may be appending


def release(kind: str, state_dir: Path, *, unpin: bool = False) -> bool:
    """Leave the server of ``kind``; stop it when no live user remains and it is not pinned.

    Returns True when this call stopped the server.
    """
    root = state_dir
    key = (kind, str(root))
    with _kind_lock(key), _local:
        _held.pop(key, None)
        _leave_users(key)
        _collect_spawners()
        if not os.path.lexists(root / f"{kind}.json"):
            return False
        with file_lock(root / f"{kind}.lock"):
            state = load(root, kind)
            if state is None:
                return False
            mine = me().as_dict()
            state.users = [u for u in state.users if u != mine and not dead(u)]
            if unpin:
                state.pinned = False
                if state.directory is not None:
                    (state.directory / _supervisor.PINNED).unlink(missing_ok=True)
            in_use = state.directory is not None and users_present(state.directory)
            if state.server_alive() and (state.pinned or in_use):
                write_state(root / f"{kind}.json", state.to_json())
                return False
            stop(state)
            (root / f"{kind}.json").unlink(missing_ok=True)
            return True


def pin(kind: str, state_dir: Path, pinned: bool = True) -> bool:
    """Keep the running server of ``kind`` up after its last user leaves (until ``release(unpin=True)``,
    i.e. ``isolated-env down``), or with ``pinned=False`` let it stop with its last user again.
    Returns False when no server of that kind is running."""
    with _local, file_lock(state_dir / f"{kind}.lock"):
        state = load(state_dir, kind)
        if state is None or not state.server_alive() or state.directory is None:
            return False
        state.pinned = pinned
        marker = state.directory / _supervisor.PINNED
        if pinned:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
        write_state(state_dir / f"{kind}.json", state.to_json())
        return True


def status(kind: str, state_dir: Path) -> ServerState | None:
    """The state of ``kind``'s server (its live users only); a state file that cannot be trusted is
    recovered first (its server adopted or, when none is found, the file removed)."""
    try:
        state = read_state(state_dir / f"{kind}.json", kind)
    except CorruptState:
        with _local, file_lock(state_dir / f"{kind}.lock"):
            state = load(state_dir, kind)
    if state is not None:
        state.users = [u for u in state.users if not dead(u)]
        if state.directory is not None:
            state.pinned = state.pinned or (state.directory / _supervisor.PINNED).exists()
    return state


def stop(state: ServerState, timeout: float = 10.0, *, sig: signal.Signals | None = None) -> None:
    """Stop the server process (``sig``, by default the signal its state records, then SIGKILL) and
    remove its directory. A pid the state names is signalled only when it is this server."""
    proc = _children.pop(state.pid, None)
    if state.server_alive():
        chosen = sig if sig is not None else _signal_named(state.stop_signal)
        with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
            os.kill(state.pid, chosen)
        if not _exited(state, proc, timeout):
            _log.warning("the embedded %s server (pid %d) ignored %s for %g s; killing it",
                         state.kind, state.pid, chosen.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, signal.SIGKILL)
            _exited(state, proc, 5.0)
    elif proc is not None:
        proc.poll()  # collect the exit status of a child that died on its own
    remove_server_dir(state)


def _signal_named(name: str) -> signal.Signals:
    try:
        return signal.Signals[name]
    except KeyError:
        _log.warning("unknown stop signal %r in a state file; using SIGTERM", name)
        return signal.SIGTERM


def _exited(state: ServerState, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait for the server to exit: our child through its Popen; another process's child by polling,
    since it stays a zombie until its parent collects it."""
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # the answer is server_alive() below
            proc.wait(timeout=timeout)
        return not state.server_alive()
    return poll_until(lambda: not state.server_alive(), timeout)


def reap(kind: str, state_dir: Path) -> list[str]:
    """Remove what dead embedded servers of ``kind`` left in ``state_dir``: the state file of a
    server that is gone (or that cannot be trusted, its server adopted), servers that no state
    names, and every ``<kind>-*`` directory no live server owns. Returns the paths.

    Blocking. Holds the kind's lock, under which servers are started, so a directory being filled by
    a start in progress is never taken for a leftover.
    """
    if not state_dir.is_dir():
        return []
    removed: list[str] = []
    statefile = state_dir / f"{kind}.json"
    with _local, file_lock(state_dir / f"{kind}.lock"):
        try:
            state = read_state(statefile, kind)
        except CorruptState as exc:
            _log.warning("isolated_env: the state file %s cannot be trusted (%s)", statefile, exc)
            state = adopt(state_dir, kind)
            if state is not None:
                write_state(statefile, state.to_json())
            else:
                statefile.unlink(missing_ok=True)
                removed.append(str(statefile))
        live_dir: str | None = None
        if state is not None and state.server_alive():
            live_dir = str(state.directory)
        elif state is not None:
            _collect(state)
            statefile.unlink(missing_ok=True)
            removed.append(str(statefile))
        stop_orphans(state_dir, kind, keep=state.pid if state is not None and live_dir else None)
        for path in sorted(state_dir.glob(f"{kind}-*")):
            if path.is_symlink():
                path.unlink()  # never followed: whatever it points at stays
                removed.append(str(path))
            elif path.is_dir() and str(path) != live_dir:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
    _diagnostics.reaped(kind, removed, "left by embedded servers that are no longer running")
    return removed


def on_release_all(callback: Callable[[], None]) -> None:
    """Run ``callback`` after :func:`release_all` left every server (drop cached views)."""
    _on_release_all.append(callback)


def release_all() -> None:
    """Leave every server this process joined (atexit, and the pytest plugin's session end)."""
    for kind, root in list(_held):
        try:
            release(kind, Path(root))
        except Exception as exc:  # one server that cannot be left must not keep us from the others
            _log.warning("could not leave the embedded %s server in %s: %r", kind, root, exc)
    with _local:
        _collect_spawners(wait=30.0)  # no launcher left a child of ours; each exits once it forked (slow under load)
    for callback in _on_release_all:
        callback()
