"""The state files of embedded servers, read as untrusted input and written atomically.

A state file (``<state dir>/<kind>.json``) says which process is a kind's server, where its
directory is and who uses it. Whoever can write the state directory can write it, so nothing read
from one is trusted:

- a state that does not parse, or names a directory (or a file, a socket) outside the state
  directory, is :class:`CorruptState`, never acted on;
- a pid is our server only when the process started at the recorded time, runs the recorded
  executable and works in (or names on its command line) the server's directory;
- a directory is removed only when it lies inside the state directory and is named
  ``<kind>-…``, never through a symlink;
- writes go to a fresh temporary file (``O_CREAT|O_EXCL|O_NOFOLLOW``, a random name) then
  ``os.replace``: a planted ``*.tmp`` symlink is never followed, a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "CorruptState", "ServerState", "file_lock", "inside", "read_state", "remove_server_dir", "write_state",
]

_log = logging.getLogger("isolated_env")

# Paths a provider records in ``info`` that must lie inside the state directory (files we read,
# sockets we connect to: never /etc/shadow, never another user's socket).
_PATH_KEYS = ("log", "password_file", "unix_socket")


class CorruptState(ValueError):
    """A state file that cannot be trusted: unparsable, or naming paths it has no business naming."""


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
        if not isinstance(data, dict):
            raise CorruptState("not a JSON object")
        data.pop("reused", None)
        state = cls(**data)
        state._check_types()
        return state

    def _check_types(self) -> None:
        ok = (
            isinstance(self.kind, str) and type(self.pid) is int and self.pid > 0
            and isinstance(self.create_time, (int, float)) and isinstance(self.info, dict)
            and isinstance(self.users, list) and all(isinstance(u, dict) for u in self.users)
            and isinstance(self.pinned, bool) and isinstance(self.startup_ms, (int, float))
            and self.stop_signal in signal.Signals.__members__
        )
        if not ok:
            raise CorruptState("a field has the wrong type")

    @property
    def directory(self) -> Path | None:
        d = self.info.get("dir")
        return Path(d) if isinstance(d, str) and d else None

    def server_alive(self) -> bool:
        """Whether the recorded process still runs and is this server (not a reused pid, not a
        process a planted state file names)."""
        try:
            proc = psutil.Process(self.pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - self.create_time) >= 0.05:
                    return False
                return self._is_ours(proc)
        except psutil.Error:
            return False

    def _is_ours(self, proc: psutil.Process) -> bool:
        exe = self.info.get("exe")
        if isinstance(exe, str) and exe:
            with contextlib.suppress(psutil.AccessDenied):  # the creation time still vouches for it
                if proc.exe() != exe:
                    return False
        directory = self.directory
        if directory is None:
            return False
        where = str(directory)
        try:
            cwd = proc.cwd()
        except psutil.AccessDenied:
            cwd = ""
        if cwd == where or cwd.startswith(where + os.sep):
            return True
        try:
            return any(where in arg for arg in proc.cmdline())
        except psutil.AccessDenied:
            return False


def inside(root: Path, path: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies strictly inside ``root``."""
    try:
        real_root = root.resolve()
        real = path.resolve()
    except (OSError, RuntimeError):
        return False
    return real != real_root and real.is_relative_to(real_root)


def _check_paths(state: ServerState, root: Path) -> None:
    directory = state.directory
    if directory is None or not directory.is_absolute() or not inside(root, directory):
        raise CorruptState(f"its server directory {state.info.get('dir')!r} is not inside {root}")
    if not directory.name.startswith(f"{state.kind}-"):
        raise CorruptState(f"its server directory {directory} is not named {state.kind}-…")
    for key in _PATH_KEYS:
        value = state.info.get(key)
        if value is not None and (not isinstance(value, str) or not inside(root, Path(value))):
            raise CorruptState(f"its {key} {value!r} is not inside the state directory {root}")
    host = state.info.get("host")
    if isinstance(host, str) and host.startswith("/") and not inside(root, Path(host)):
        raise CorruptState(f"its socket directory {host!r} is not inside the state directory {root}")


def read_state(path: Path, kind: str, *, root: Path | None = None) -> ServerState | None:
    """The state in ``path`` (None when there is none), checked against its state directory
    ``root`` (by default the directory holding ``path``).

    Raises :class:`CorruptState` for a file that exists but cannot be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptState("it is a symlink") from None
        raise CorruptState(f"it cannot be read ({exc})") from None
    try:
        with os.fdopen(fd, "rb") as f:
            text = f.read(1 << 20).decode()
        state = ServerState.from_json(text)
    except CorruptState:
        raise
    except (ValueError, TypeError, OSError) as exc:
        raise CorruptState(f"{type(exc).__name__}: {exc}") from None
    if state.kind != kind:
        raise CorruptState(f"it describes a {state.kind!r} server")
    _check_paths(state, root or path.parent)
    return state


def write_state(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, through a fresh file no planted link can redirect."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # a name someone planted (or a one-in-2^48 collision): another
            continue
        break
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # renames over a planted symlink, never through it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_lock(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        _log.warning("isolated_env: %s was a symlink, which a lock file never is; removed it", path)
        os.unlink(path)
        return os.open(path, flags | os.O_EXCL, 0o600)


@contextlib.contextmanager
def file_lock(path: Path, *, make_parent: bool = True) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed, never through a symlink)."""
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def open_lock(path: Path) -> int:
    """A lock file's descriptor (for shared locks held as long as a process uses a server)."""
    return _open_lock(path)


def remove_server_dir(state: ServerState) -> None:
    """Remove the server's directory, if it is one: named ``<kind>-…``, not a symlink, and inside
    the directory that holds the state (checked when the state was read). Anything else is refused
    and logged."""
    directory = state.directory
    if directory is None:
        return
    if (not directory.name.startswith(f"{state.kind}-") or directory.is_symlink()
            or not inside(directory.parent, directory)):
        _log.warning("isolated_env: refused to remove %s, which a %s state file names: it is not a server "
                     "directory", directory, state.kind)
        return
    shutil.rmtree(directory, ignore_errors=True)
