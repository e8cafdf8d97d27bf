"""isolated_fs(): a private scratch directory for one test, removed on exit.

Directories live under a per-process run directory; run directories of dead processes are removed
the next time any process starts one (or by ``isolated-env prune``). A failed test's directory is
moved under ``kept/`` when keep-on-failure is on, and stays there until ``prune --kept``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread

from .._config import Settings, run_id
from .._contract import Kept, current_settings, keeps
from .._errors import IsolationBroken, UnsafePath
from .._ownership import Scope, alive, me, parse
from .._resource import report_kept, resource

__all__ = ["FileSystemHandle", "isolated_fs"]

_run_dirs: dict[str, Path] = {}
_ALL = Scope()


def _reap(base: Path, scope: Scope = _ALL, *, dry_run: bool = False) -> list[str]:
    """Remove the run directories (``run-<owner key>``) of owners provably dead: in this machine and
    PID namespace, and gone. A directory of an owner elsewhere (a container sharing the directory)
    is left to that owner's machine. ``scope`` narrows it; ``dry_run`` only lists them."""
    removed = []
    for child in sorted(base.iterdir()) if base.is_dir() else ():
        owner = parse(child.name[4:]) if child.name.startswith("run-") else None
        if owner is not None and scope.covers(owner[0]) and alive(owner[0]) is False:
            if not dry_run:
                shutil.rmtree(child, ignore_errors=True)
            removed.append(str(child))
    return removed


def run_directory(base: Path) -> Path:
    """This process's run directory under ``base`` (created, and stale ones reaped, on first use)."""
    key = str(base)
    path = _run_dirs.get(key)
    if path is None or not path.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        _reap(base)
        path = base / f"run-{me().key}"
        path.mkdir(mode=0o700, exist_ok=True)
        _run_dirs[key] = path
        atexit.register(shutil.rmtree, path, True)
    return path


class FileSystemHandle:
    """A private directory: ``.path``, async reads and writes relative to it, and ``resolve()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._real: tuple[Path, str] | None = None  # (path, its realpath): one lstat walk, not one per call

    def __repr__(self) -> str:
        return f"<FileSystemHandle {self.path}>"

    def __fspath__(self) -> str:
        return str(self.path)

    def resolve(self, relative: str | os.PathLike[str]) -> Path:
        """The absolute path of ``relative`` inside the directory; refuses anything that leaves it
        (absolute paths, ``..``, symlinks pointing out)."""
        rel = Path(relative)
        if rel.is_absolute():
            raise UnsafePath(f"{str(relative)!r} is absolute; pass a path relative to {self.path}")
        # The real path of the directory itself, once: a symlink put in its place later resolves
        # outside that path below, and is refused like any other.
        if self._real is None or self._real[0] is not self.path:
            self._real = (self.path, os.path.realpath(self.path))
        root = self._real[1]
        target = os.path.realpath(os.path.join(root, rel))
        if target != root and not target.startswith(root + os.sep):
            raise UnsafePath(
                f"{str(relative)!r} resolves to {target}, outside the isolated directory {root}; "
                "use a path inside it (no '..' or symlinks that lead out)"
            )
        return Path(target)

    async def write_text(self, relative: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
        """Write ``text`` to ``relative`` inside the directory (see :meth:`write_bytes`)."""
        return await self.write_bytes(relative, text.encode(encoding))

    async def read_text(self, relative: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        return await anyio.Path(self.resolve(relative)).read_text(encoding=encoding)

    async def write_bytes(self, relative: str | os.PathLike[str], data: bytes) -> Path:
        """Write ``data`` to ``relative`` inside the directory. A write never leaves it: a symlink
        is refused (``UnsafePath``), and a file with other hard links is replaced by a new file, so
        a link to a file outside the directory keeps that file's content."""
        target = self.resolve(relative)
        if len(data) <= _INLINE_BYTES:
            _write_inside(relative, target, data)
        else:
            await anyio.to_thread.run_sync(_write_inside, relative, target, data)
        return target

    async def read_bytes(self, relative: str | os.PathLike[str]) -> bytes:
        return await anyio.Path(self.resolve(relative)).read_bytes()

    def exists(self, relative: str | os.PathLike[str]) -> bool:
        return self.resolve(relative).exists()

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.path))

    def _clear(self) -> None:
        for child in list(self.path.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


# A write or a removal this small costs the loop less than the thread hop that would carry it
# (under a test runner anyio starts a new worker thread for nearly every hop: its pool lives with the
# task that ran the fixture or the test).
_INLINE_BYTES = 64 * 1024
_INLINE_ENTRIES = 16


def _remove_small(path: Path) -> bool:
    """Remove ``path`` in place when it holds a few files and no directory; False when it is larger."""
    with os.scandir(path) as listing:
        entries: list[str] = []
        for entry in listing:
            if len(entries) == _INLINE_ENTRIES or entry.is_dir(follow_symlinks=False):
                return False
            entries.append(entry.path)
    for name in entries:
        os.unlink(name)
    os.rmdir(path)
    return True


def _write_inside(relative: str | os.PathLike[str], target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.realpath(target.parent) != str(target.parent):  # resolve() gave a path free of symlinks
        raise UnsafePath(f"{str(relative)!r}: a directory on its way was replaced by a symlink while writing")
    try:
        # Without O_TRUNC: a file with other hard links must not be emptied before it is looked at.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(
                f"{str(relative)!r} is a symlink; isolated_fs writes do not follow symlinks (write to its "
                "target's own path inside the directory, or remove the link first)"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader (O_NONBLOCK keeps the open from hanging)
            raise _not_regular(relative) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(relative)
        if info.st_nlink > 1:
            # Another name (maybe outside the directory) shares this file: write a new file and
            # rename it over this name, so the other names keep the old content.
            os.close(fd)
            fd = -1
            _replace(target, data, stat.S_IMODE(info.st_mode))
            return
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        if fd >= 0:
            os.close(fd)


def _not_regular(relative: str | os.PathLike[str]) -> UnsafePath:
    return UnsafePath(f"{str(relative)!r} is not a regular file; isolated_fs writes only regular files")


def _replace(target: Path, data: bytes, mode: int) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # already renamed, or never written
            os.unlink(temp)
        raise


async def _reset(handle: FileSystemHandle) -> None:
    await anyio.to_thread.run_sync(handle._clear)


def _move(path: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    path.rename(target)


def _kept_dir(root: Path) -> Path:
    return root / "kept"


async def reap(settings: Settings, kept: bool = False, *, scope: Scope = _ALL, dry_run: bool = False) -> list[str]:
    """Remove the run directories of dead processes (and, with ``kept``, the kept directories);
    ``scope`` narrows it to one run (a kept directory's name ends with its run id) or this
    machine's runs (kept directories carry no machine: none then), ``dry_run`` only lists them."""
    root = settings.state_dir / "fs"

    def sweep() -> list[str]:
        removed = _reap(root, scope, dry_run=dry_run)
        kept_root = _kept_dir(root)
        if kept and kept_root.is_dir() and scope.machine is None:
            for child in sorted(kept_root.iterdir()):
                if scope.run is None or child.name.endswith(f"-{scope.run}"):
                    if not dry_run:
                        shutil.rmtree(child, ignore_errors=True)
                    removed.append(str(child))
        return removed

    return await anyio.to_thread.run_sync(sweep)


async def _self_check() -> None:
    async with isolated_fs() as a, isolated_fs() as b:
        await a.write_text("x.txt", "x")
        if b.exists("x.txt") or a.path == b.path:
            raise IsolationBroken("isolation self-check failed: two tests shared a directory")
    if a.path.exists():
        raise IsolationBroken("isolation self-check failed: a directory survived its test")


@contextlib.asynccontextmanager
async def _nested(outer: FileSystemHandle) -> AsyncIterator[FileSystemHandle]:
    """A directory of a narrower scope's own, starting as a copy of ``outer``'s (symlinks copied as links)."""
    # The same base: the parent of the run directory holding outer's directory.
    async with isolated_fs(outer.path.parent.parent) as inner:
        await anyio.to_thread.run_sync(
            functools.partial(shutil.copytree, outer.path, inner.path, symlinks=True, dirs_exist_ok=True)
        )
        yield inner


@resource("fs", reset=_reset, reap=reap, self_check=_self_check, nest=lambda handle: _nested(handle))
async def isolated_fs(
    base: str | os.PathLike[str] | None = None, *, keep_on_failure: bool | None = None
) -> AsyncIterator[FileSystemHandle]:
    """A private, empty directory for one test, removed with everything in it on exit."""
    root = Path(base) if base is not None else current_settings().state_dir / "fs"
    run_dir = _run_dirs.get(str(root))
    if run_dir is None or not run_dir.is_dir():  # first use: made, and stale ones swept, off the loop
        run_dir = await anyio.to_thread.run_sync(run_directory, root)
    # One mkdir on tmpfs: cheaper on the loop than the thread hop that would carry it (~0.1 ms).
    path = Path(tempfile.mkdtemp(prefix="t-", dir=run_dir))
    outcome = None
    try:
        outcome = yield FileSystemHandle(path)
    finally:
        keep = outcome is not None and keeps(outcome, keep_on_failure)
        if keep:
            target = _kept_dir(root) / f"{path.name}-{run_id()}"
            await anyio.to_thread.run_sync(_move, path, target)
            report_kept(Kept("fs", str(target), "remove with `isolated-env prune --kept`"))
        else:
            try:
                os.rmdir(path)  # an empty directory (most tests): one syscall, no thread hop
            except OSError:
                try:
                    small = _remove_small(path)
                except OSError:
                    small = False
                if not small:
                    await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))

