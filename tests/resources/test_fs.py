from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import pytest

import isolated_env as ie


async def test_private_directory_removed_on_exit() -> None:
    async with ie.isolated_fs() as fs:
        await fs.write_text("reports/out.txt", "héllo")
        await fs.write_bytes("blob.bin", b"\x00\x01")
        assert await fs.read_text("reports/out.txt") == "héllo"
        assert await fs.read_bytes("blob.bin") == b"\x00\x01"
        assert fs.listdir() == ["blob.bin", "reports"]
        path = fs.path
        assert os.stat(path).st_mode & 0o777 == 0o700
    assert not path.exists()


async def test_concurrent_directories_are_distinct() -> None:
    paths = set()

    async def one() -> None:
        async with ie.isolated_fs() as fs:
            await fs.write_text("same-name.txt", str(fs.path))
            await anyio.lowlevel.checkpoint()
            assert await fs.read_text("same-name.txt") == str(fs.path)
            paths.add(fs.path)

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(one)
    assert len(paths) == 50 and not any(p.exists() for p in paths)


@pytest.mark.parametrize("bad", ["../escape.txt", "a/../../escape.txt", "/etc/passwd"])
async def test_escapes_are_refused(bad: str) -> None:
    async with ie.isolated_fs() as fs:
        with pytest.raises(ie.UnsafePath):
            await fs.write_text(bad, "x")
        with pytest.raises(ValueError):
            fs.resolve(bad)


async def test_symlink_leading_out_is_refused() -> None:
    async with ie.isolated_fs() as fs:
        os.symlink("/etc", fs.path / "link")
        with pytest.raises(ie.UnsafePath, match="outside the isolated directory"):
            await fs.read_text("link/hostname")
        assert fs.resolve("ok/../file.txt") == fs.path.resolve() / "file.txt"


async def test_reset_empties_the_directory() -> None:
    async with ie.Environment() as env:
        fs = await env.enter(ie.isolated_fs())
        await fs.write_text("a/b.txt", "x")
        await env.reset()
        assert fs.listdir() == [] and fs.path.exists()
