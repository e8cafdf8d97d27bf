"""isolated_fs(): a private scratch directory for one test, removed on exit.

Directories live under a per-process run directory; run directories of dead processes are removed
the next time any process starts one (or by ``isolated-env prune``). A failed test's directory is
moved under ``kept/`` when keep-on-failure is on, and stays there until ``prune --kept``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread

from .._config import Settings, hostname, run_id
from .._contract import Kept, current_settings, keeps
from .._errors import IsolationBroken, UnsafePath
from .._resource import report_kept, resource
from .._servers.registry import owner_alive

__all__ = ["FileSystemHandle", "isolated_fs"]

_run_dirs: dict[str, Path] = {}
_RUN_DIR = re.compile(r"^run-[0-9a-z]+-(\d+)-(\d+)$")


def _reap(base: Path) -> list[str]:
    removed = []
    for child in base.iterdir() if base.is_dir() else ():
        match = _RUN_DIR.match(child.name)
        if match and owner_alive({"host": hostname(), "pid": int(match.group(1))}) is False:
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
        path = base / f"run-{run_id()}-{os.getpid()}-{int(os.times().elapsed * 100)}"
        path.mkdir(mode=0o700, exist_ok=True)
        _run_dirs[key] = path
        atexit.register(shutil.rmtree, path, True)
    return path


class FileSystemHandle:
    """A private directory: ``.path``, async reads and writes relative to it, and ``resolve()``."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
        root = os.path.realpath(self.path)
        target = os.path.realpath(os.path.join(root, rel))
        if target != root and not target.startswith(root + os.sep):
            raise UnsafePath(
                f"{str(relative)!r} resolves to {target}, outside the isolated directory {root}; "
                "use a path inside it (no '..' or symlinks that lead out)"
            )
        return Path(target)

    async def write_text(self, relative: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
        target = anyio.Path(self.resolve(relative))
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_text(text, encoding=encoding)
        return Path(target)

    async def read_text(self, relative: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        return await anyio.Path(self.resolve(relative)).read_text(encoding=encoding)

    async def write_bytes(self, relative: str | os.PathLike[str], data: bytes) -> Path:
        target = anyio.Path(self.resolve(relative))
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(data)
        return Path(target)

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


async def _reset(handle: FileSystemHandle) -> None:
    await anyio.to_thread.run_sync(handle._clear)


def _move(path: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, exist_ok=True)
    path.rename(target)


def _kept_dir(root: Path) -> Path:
    return root / "kept"


async def reap(settings: Settings, kept: bool = False) -> list[str]:
    """Remove the run directories of dead processes (and, with ``kept``, the kept directories)."""
    root = settings.state_dir / "fs"

    def sweep() -> list[str]:
        removed = _reap(root)
        kept_root = _kept_dir(root)
        if kept and kept_root.is_dir():
            for child in sorted(kept_root.iterdir()):
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


@resource("fs", reset=_reset, reap=reap, self_check=_self_check)
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
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))

