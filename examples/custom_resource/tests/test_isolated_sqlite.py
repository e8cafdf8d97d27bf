"""isolated_sqlite as its users meet it: through isolated_env's fixture, marker and Environment."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from isolated_sqlite import SqliteHandle, SqliteResource, isolated_sqlite

import isolated_env as ie


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ie.Settings:
    """A state directory of the test's own, so reaping it touches nobody else's files."""
    monkeypatch.setenv("ISOLATED_ENV_STATE_DIR", str(tmp_path / "state"))
    return ie.resolve()


async def test_the_fixture_is_a_real_private_database(isolated_sqlite: SqliteHandle) -> None:
    await isolated_sqlite.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    await isolated_sqlite.executemany("INSERT INTO users (email) VALUES (?)", [("a@b.c",), ("d@e.f",)])
    assert await isolated_sqlite.fetchval("SELECT count(*) FROM users") == 2
    assert await isolated_sqlite.fetchval("SELECT sqlite_version()") == sqlite3.sqlite_version
    # another connection (the code under test's own) sees the same rows through .path
    other = sqlite3.connect(isolated_sqlite.path)
    try:
        assert other.execute("SELECT email FROM users ORDER BY id").fetchall() == [("a@b.c",), ("d@e.f",)]
    finally:
        other.close()


@pytest.mark.requires_sqlite
async def test_environment_files_it_under_its_kind() -> None:
    async with ie.Environment() as env:
        db = await env.enter(isolated_sqlite())
        assert env["sqlite"] is db
        assert await db.tables() == []


async def test_two_live_handles_are_apart(settings: ie.Settings) -> None:
    async with isolated_sqlite() as a, isolated_sqlite() as b:
        await a.execute("CREATE TABLE only_a (x)")
        assert a.path != b.path
        assert await b.tables() == []


async def test_a_reused_file_comes_back_pristine(settings: ie.Settings) -> None:
    async with isolated_sqlite() as first:
        path = first.path
        await first.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1); PRAGMA user_version = 7;")
        await first.execute("BEGIN")
        await first.execute("INSERT INTO t VALUES (2)")  # left open: the reset must not replay it
    async with isolated_sqlite() as second:
        assert second.path == path  # the pool handed the same file out again
        assert await second.tables() == []
        assert await second.fetchval("PRAGMA user_version") == 0


async def test_schema_is_a_template_and_reset_restores_it(settings: ie.Settings) -> None:
    schema = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
    async with ie.Environment() as env:
        db = await env.enter(isolated_sqlite(schema))
        await db.execute("INSERT INTO items (name) VALUES (?)", ("x",))
        await db.execute("CREATE TABLE scratch (y)")
        await env.reset()  # what runs between two Hypothesis examples
        assert await db.tables() == ["items"]
        assert await db.fetchval("SELECT count(*) FROM items") == 0


async def test_a_bad_schema_says_so(settings: ie.Settings) -> None:
    with pytest.raises(ie.ConfigError, match="the schema given to isolated_sqlite"):
        async with isolated_sqlite("CREATE TABLE (oops"):
            pass


async def test_a_released_handle_refuses_use(settings: ie.Settings) -> None:
    async with isolated_sqlite() as db:
        pass
    with pytest.raises(ie.IsolatedEnvError, match="was released"):
        await db.fetchval("SELECT 1")


async def test_a_failed_test_keeps_its_file_until_reap_kept(settings: ie.Settings) -> None:
    async with ie.Environment() as env:
        db = await env.enter(isolated_sqlite(keep_on_failure=True))
        await db.execute("CREATE TABLE evidence (x)")
        await db.execute("INSERT INTO evidence VALUES (42)")
        env.outcome = ie.Outcome.FAILED  # what the pytest plugin sets for a failed test
    [kept] = env.kept
    assert kept.kind == "sqlite" and kept.reach == f"sqlite3 {kept.where}"
    reopened = sqlite3.connect(kept.where)
    try:
        assert reopened.execute("SELECT x FROM evidence").fetchall() == [(42,)]
    finally:
        reopened.close()
    assert kept.where not in await SqliteResource.reap(settings)  # kept files wait for kept=True
    assert await anyio.Path(kept.where).exists()
    assert await SqliteResource.reap(settings, kept=True) == [kept.where]
    assert not await anyio.Path(kept.where).exists()


async def test_a_passed_test_keeps_nothing(settings: ie.Settings) -> None:
    async with ie.Environment() as env:
        await env.enter(isolated_sqlite(keep_on_failure=True))
    assert env.kept == []


DIES_WITHOUT_CLEANUP = """
import os, anyio
from isolated_sqlite import isolated_sqlite

async def main():
    async with isolated_sqlite() as db:
        await db.execute("CREATE TABLE t (x)")
        print(db.path, flush=True)
        os._exit(0)  # no cleanup, no atexit: as if killed

anyio.run(main)
"""


async def test_reap_removes_the_files_of_dead_owners_only(settings: ie.Settings) -> None:
    async with isolated_sqlite() as mine:  # a live owner: this process
        mine_dir = mine.path.parent
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-c", DIES_WITHOUT_CLEANUP])
    orphan = anyio.Path(done.stdout.decode().strip())
    assert await orphan.exists()
    removed = await SqliteResource.reap(settings)
    assert removed == [str(orphan.parent)]
    assert not await orphan.exists()
    assert await anyio.Path(mine_dir).is_dir()


async def test_probe_finds_a_writable_state_dir(settings: ie.Settings, tmp_path: Path) -> None:
    await SqliteResource.probe(settings)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with pytest.raises(ie.ServiceUnavailable, match="cannot create a database file under"):
        await SqliteResource.probe(ie.resolve(state_dir=blocked / "state"))


class _NoReset(SqliteResource):
    async def clean(self, item: object) -> None:
        pass  # a broken reset, for the self-check to catch


async def test_self_check_passes_and_catches_a_broken_reset(settings: ie.Settings) -> None:
    await SqliteResource.self_check()
    with pytest.raises(ie.IsolatedEnvError, match="tables survived their test"):
        await _NoReset.self_check()
