"""fs guard rails: writes of isolated_fs never leave the directory through a hard link or a symlink."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import isolated_env as ie


def _text(path: Path) -> str:
    return path.read_text()


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    victim = tmp_path / "outside.txt"
    victim.write_text("keep me")
    yield victim


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """Where the isolated directories go: the file system of ``outside``, so hard links can reach it."""
    return tmp_path / "isolated"


async def test_hardlink_to_an_outside_file_is_replaced_not_written_through(outside: Path, base: Path) -> None:
    async with ie.isolated_fs(base) as fs:
        os.link(outside, fs.path / "link.txt")
        await fs.write_text("link.txt", "new content")
        assert await fs.read_text("link.txt") == "new content"
        assert _text(outside) == "keep me"
        assert os.stat(fs.path / "link.txt").st_nlink == 1 and os.stat(outside).st_nlink == 1
        await fs.write_bytes("link.txt", b"again")  # an ordinary file now: written in place
        assert await fs.read_bytes("link.txt") == b"again"
    assert _text(outside) == "keep me"


async def test_replacing_a_hardlinked_file_keeps_its_permissions(outside: Path, base: Path) -> None:
    os.chmod(outside, 0o640)
    async with ie.isolated_fs(base) as fs:
        os.link(outside, fs.path / "link.txt")
        await fs.write_bytes("link.txt", b"x")
        assert os.stat(fs.path / "link.txt").st_mode & 0o777 == 0o640
        assert fs.listdir() == ["link.txt"]  # no temporary file left behind
    assert _text(outside) == "keep me"


async def test_symlink_to_an_outside_file_is_refused(outside: Path, base: Path) -> None:
    async with ie.isolated_fs(base) as fs:
        os.symlink(outside, fs.path / "link.txt")
        with pytest.raises(ie.UnsafePath, match="outside the isolated directory"):
            await fs.write_text("link.txt", "x")
        with pytest.raises(ie.UnsafePath, match="outside the isolated directory"):
            await fs.write_bytes("link.txt", b"x")
    assert _text(outside) == "keep me"


async def test_symlinked_directory_leading_out_is_refused(outside: Path, base: Path) -> None:
    async with ie.isolated_fs(base) as fs:
        os.symlink(outside.parent, fs.path / "dir")
        with pytest.raises(ie.UnsafePath, match="outside the isolated directory"):
            await fs.write_text("dir/outside.txt", "x")
        with pytest.raises(ie.UnsafePath, match="outside the isolated directory"):
            await fs.write_text("dir/new.txt", "x")
    assert _text(outside) == "keep me" and "new.txt" not in os.listdir(outside.parent)


async def test_a_symlink_inside_the_directory_is_written_at_its_target() -> None:
    async with ie.isolated_fs() as fs:
        await fs.write_text("real.txt", "one")
        os.symlink("real.txt", fs.path / "alias.txt")
        written = await fs.write_text("alias.txt", "two")
        assert written == (fs.path / "real.txt").resolve()
        assert await fs.read_text("real.txt") == "two"


async def test_writing_a_fifo_is_refused() -> None:
    async with ie.isolated_fs() as fs:
        os.mkfifo(fs.path / "pipe")
        with pytest.raises(ie.UnsafePath, match="not a regular file"):
            await fs.write_text("pipe", "x")
