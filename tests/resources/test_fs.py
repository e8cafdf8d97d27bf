from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import pytest

import isolated_env as ie


async def write_read_list_and_leave() -> None:
    """What an isolated_fs does on any backend (tests/resources/trio_cases.py runs it on trio)."""
    async with ie.isolated_fs() as fs:
        await fs.write_text("reports/out.txt", "héllo")
        await fs.write_bytes("blob.bin", b"\x00\x01")
        assert await fs.read_text("reports/out.txt") == "héllo"
        assert await fs.read_bytes("blob.bin") == b"\x00\x01"
        assert fs.listdir() == ["blob.bin", "reports"]
        path = fs.path
        assert os.stat(path).st_mode & 0o777 == 0o700
    assert not path.exists()


async def test_private_directory_removed_on_exit() -> None:
    await write_read_list_and_leave()


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


async def test_keep_on_failure_moves_the_directory_aside_until_pruned() -> None:
    from isolated_env._config import resolve
    from isolated_env.resources.fs import reap

    async with ie.Environment() as env:
        fs = await env.enter(ie.isolated_fs(keep_on_failure=True))
        await fs.write_text("evidence.txt", "42")
        env.outcome = ie.Outcome.FAILED
    [kept] = env.kept
    assert not fs.path.exists()
    assert await anyio.Path(kept.where, "evidence.txt").read_text() == "42"
    assert kept.where in await reap(resolve(), kept=True)
    assert not await anyio.Path(kept.where).exists()


async def test_a_passing_test_keeps_nothing_even_with_keep_on_failure() -> None:
    async with ie.Environment() as env:
        fs = await env.enter(ie.isolated_fs(keep_on_failure=True))
        await fs.write_text("a.txt", "x")
    assert env.kept == [] and not fs.path.exists()
