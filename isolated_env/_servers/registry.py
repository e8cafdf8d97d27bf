"""Cross-process sharing of embedded servers.

One server per kind and machine, shared by every process that wants it (pytest-xdist workers,
two concurrent runs): a file lock serialises start and stop, a JSON state file says where the
server is and which processes use it. The last user to leave stops it; a user that died without
leaving (SIGKILL) is pruned the next time anyone looks; a state file whose server is dead is
replaced. ``isolated-env up`` pins a server so it outlives its users for a fast edit-test loop.

Nothing here knows a kind of server: how to start one, stop one and read its state comes from the
kind's provider (:mod:`._provider`); the stop signal it asks for is recorded in the state file, so
``isolated-env down`` in a fresh process stops the server the way its provider wants.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread
import psutil

from .._checks import checked_private_dir
from .._config import Settings
from . import _diagnostics
from ._owners import owner_alive, owner_tag
from ._process import poll_until

__all__ = [
    "Embedded", "ServerState", "acquire", "owner_alive", "owner_tag", "pin", "reap", "release", "release_all",
    "status", "stop",
]

_log = logging.getLogger("isolated_env")


@dataclasses.dataclass
class ServerState:
    """What the state file says about one running server."""

    kind: str
    pid: int
    create_time: float
    info: dict[str, Any]
    users: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pinned: bool = False
    startup_ms: float = 0.0
    stop_signal: str = "SIGTERM"  # the provider's choice, recorded for whoever stops the server
    reused: bool = False  # this process found the server already running

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("reused")
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ServerState:
        data = json.loads(text)
        return cls(**data)

    def server_alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - self.create_time) < 0.05
        except psutil.Error:
            return False


StartFn = Callable[[Path], tuple[subprocess.Popen[bytes], dict[str, Any]]]
"""Starts a server in the given fresh directory; returns the process and connection info."""

_local = threading.Lock()
_held: dict[tuple[str, str], ServerState] = {}
_children: dict[int, subprocess.Popen[bytes]] = {}
_atexit_registered = False


def state_root(state_dir: Path) -> Path:
    """``state_dir``, created 0711 if missing; a ConfigError unless this user alone owns and writes it."""
    return checked_private_dir(state_dir, "ISOLATED_ENV_STATE_DIR")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read(path: Path) -> ServerState | None:
    try:
        return ServerState.from_json(path.read_text())
    except (OSError, ValueError, TypeError):
        return None


def _write(path: Path, state: ServerState) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


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
        held = _held.get(key)
        if held is not None and held.server_alive() and not pin:
            return held
        statefile = root / f"{kind}.json"
        with file_lock(root / f"{kind}.lock"):
            state = _read(statefile)
            if state is not None and not state.server_alive():
                _remove_dir(state)
                _diagnostics.reaped(kind, [state.info.get("dir", str(statefile))],
                                    f"its server (pid {state.pid}) is no longer running; starting a new one")
                state = None
            if state is None:
                server_dir = root / f"{kind}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
                _remove_tree(server_dir)
                server_dir.mkdir(parents=True)
                os.chmod(server_dir, 0o711)
                started = time.perf_counter()
                try:
                    proc, info = start(server_dir)
                except BaseException:
                    _remove_tree(server_dir)
                    raise
                _children[proc.pid] = proc
                info.setdefault("dir", str(server_dir))
                state = ServerState(
                    kind=kind,
                    pid=proc.pid,
                    create_time=psutil.Process(proc.pid).create_time(),
                    info=info,
                    startup_ms=(time.perf_counter() - started) * 1000,
                    stop_signal=stop_signal.name,
                )
                _diagnostics.started(kind, state.pid, info, root, state.startup_ms)
            else:
                state.reused = True
                _diagnostics.joined(kind, state.pid, state.info)
            me = owner_tag()
            state.users = [u for u in state.users if owner_alive(u) is not False and u["pid"] != me["pid"]]
            if pin:
                state.pinned = True
            else:
                state.users.append(me)
            _write(statefile, state)
        if not pin:
            _held[key] = state
        return state


def release(kind: str, state_dir: Path, *, unpin: bool = False) -> bool:
    """Leave the server of ``kind``; stop it when no live user remains and it is not pinned.

    Returns True when this call stopped the server.
    """
    root = state_dir
    key = (kind, str(root))
    with _local:
        _held.pop(key, None)
        statefile = root / f"{kind}.json"
        if not statefile.exists():
            return False
        with file_lock(root / f"{kind}.lock"):
            state = _read(statefile)
            if state is None:
                return False
            me = os.getpid()
            state.users = [u for u in state.users if u.get("pid") != me and owner_alive(u) is not False]
            if unpin:
                state.pinned = False
            if state.users or state.pinned:
                _write(statefile, state)
                return False
            stop(state)
            statefile.unlink(missing_ok=True)
            return True


def pin(kind: str, state_dir: Path, pinned: bool = True) -> bool:
    """Keep the running server of ``kind`` up after its last user leaves (until ``release(unpin=True)``,
    i.e. ``isolated-env down``), or with ``pinned=False`` let it stop with its last user again.
    Returns False when no server of that kind is running."""
    statefile = state_dir / f"{kind}.json"
    with _local, file_lock(state_dir / f"{kind}.lock"):
        state = _read(statefile)
        if state is None or not state.server_alive():
            return False
        state.pinned = pinned
        _write(statefile, state)
        return True


def status(kind: str, state_dir: Path) -> ServerState | None:
    state = _read(state_dir / f"{kind}.json")
    if state is not None:
        state.users = [u for u in state.users if owner_alive(u) is not False]
    return state


def stop(state: ServerState, timeout: float = 10.0, *, sig: signal.Signals | None = None) -> None:
    """Stop the server process (``sig``, by default the signal its state records, then SIGKILL) and
    remove its directory."""
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
    _remove_dir(state)


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
    server that is gone and every ``<kind>-*`` directory no live server owns. Returns the paths.

    Blocking. Holds the kind's lock, under which servers are started, so a directory being filled by
    a start in progress is never taken for a leftover.
    """
    if not state_dir.is_dir():
        return []
    removed: list[str] = []
    statefile = state_dir / f"{kind}.json"
    with _local, file_lock(state_dir / f"{kind}.lock"):
        state = _read(statefile)
        live_dir: str | None = None
        if state is not None and state.server_alive():
            live_dir = state.info.get("dir")
        elif statefile.exists():
            proc = _children.pop(state.pid, None) if state is not None else None
            if proc is not None:
                proc.poll()  # collect the exit status of our own dead child
            statefile.unlink(missing_ok=True)
            removed.append(str(statefile))
        for path in sorted(state_dir.glob(f"{kind}-*")):
            if path.is_dir() and str(path) != live_dir:
                _remove_tree(path)
                removed.append(str(path))
    _diagnostics.reaped(kind, removed, "left by embedded servers that are no longer running")
    return removed


def _remove_dir(state: ServerState) -> None:
    d = state.info.get("dir")
    if d:
        _remove_tree(Path(d))


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


T = TypeVar("T")
_views: list[Embedded[Any]] = []


class Embedded(Generic[T]):
    """One kind of embedded server as this process sees it: joined (or started) once per state
    directory through :func:`acquire`, then answered from a cache."""

    def __init__(
        self,
        kind: str,
        start: Callable[[Settings, Path], tuple[subprocess.Popen[bytes], dict[str, Any]]],
        view: Callable[[ServerState], T],
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.kind = kind
        self._start = start
        self._view = view
        self._stop_signal = stop_signal
        self._lock = threading.Lock()
        self._cache: dict[str, T] = {}
        _views.append(self)

    def cached(self, settings: Settings) -> T | None:
        return self._cache.get(str(settings.state_dir))

    def join(self, settings: Settings) -> T:
        """Blocking: start or join the server and register this process as a user."""
        key = str(settings.state_dir)
        with self._lock:
            server = self._cache.get(key)
            if server is None:
                state = acquire(
                    self.kind, settings.state_dir, lambda d: self._start(settings, d), stop_signal=self._stop_signal
                )
                server = self._cache[key] = self._view(state)
            return server

    def keep_up(self, settings: Settings) -> ServerState:
        """Blocking: start the server if needed and pin it (``isolated-env up``)."""
        return acquire(
            self.kind, settings.state_dir, lambda d: self._start(settings, d), pin=True, stop_signal=self._stop_signal
        )

    async def ensure(self, settings: Settings) -> T:
        cached = self.cached(settings)
        if cached is not None:
            return cached
        return await anyio.to_thread.run_sync(self.join, settings)

    def forget(self) -> None:
        """Drop the cached view (after the registry released the server)."""
        with self._lock:
            self._cache.clear()


def release_all() -> None:
    """Leave every server this process joined (atexit, and the pytest plugin's session end)."""
    for kind, root in list(_held):
        try:
            release(kind, Path(root))
        except Exception as exc:  # one server that cannot be left must not keep us from the others
            _log.warning("could not leave the embedded %s server in %s: %r", kind, root, exc)
    for view in _views:
        view.forget()
