"""isolated_fs(): a private scratch directory for one test, removed on exit.

Directories live under a per-process run directory; run directories of dead processes are removed
the next time any process starts one.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiofiles
import aiofiles.os

from .._config import hostname, run_id
from .._errors import UnsafePath
from .._resource import current_settings, resource
from .._servers.registry import owner_alive

__all__ = ["FileSystemHandle", "isolated_fs"]

_run_dirs: dict[str, Path] = {}
_RUN_DIR = re.compile(r"^run-[0-9a-z]+-(\d+)-(\d+)$")


def _reap(base: Path) -> None:
    for child in base.iterdir() if base.is_dir() else ():
        match = _RUN_DIR.match(child.name)
        if match and owner_alive({"host": hostname(), "pid": int(match.group(1))}) is False:
            shutil.rmtree(child, ignore_errors=True)


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
        target = self.resolve(relative)
        await aiofiles.os.makedirs(target.parent, exist_ok=True)
        async with aiofiles.open(target, "w", encoding=encoding) as f:
            await f.write(text)
        return target

    async def read_text(self, relative: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        async with aiofiles.open(self.resolve(relative), encoding=encoding) as f:
            return await f.read()

    async def write_bytes(self, relative: str | os.PathLike[str], data: bytes) -> Path:
        target = self.resolve(relative)
        await aiofiles.os.makedirs(target.parent, exist_ok=True)
        async with aiofiles.open(target, "wb") as f:
            await f.write(data)
        return target

    async def read_bytes(self, relative: str | os.PathLike[str]) -> bytes:
        async with aiofiles.open(self.resolve(relative), "rb") as f:
            return await f.read()

    def exists(self, relative: str | os.PathLike[str]) -> bool:
        return self.resolve(relative).exists()

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.path))

    async def _ie_reset(self) -> None:
        for child in list(self.path.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


@resource("fs")
async def isolated_fs(base: str | os.PathLike[str] | None = None) -> AsyncIterator[FileSystemHandle]:
    """A private, empty directory for one test, removed with everything in it on exit."""
    root = Path(base) if base is not None else current_settings().state_dir / "fs"
    path = Path(tempfile.mkdtemp(prefix="t-", dir=run_directory(root)))
    try:
        yield FileSystemHandle(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
