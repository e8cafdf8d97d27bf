"""The compatibility matrix: real pytest runs of a small user project, each from a clean venv that
holds only the package and what the cell names (no pytest-xdist, no pytest-asyncio unless named).

Cells: anyio only (and no xdist); trio installed (a user project, and the suite's own
tests/resources/trio_cases.py); unittest; a sync-only project; a project that never uses the
fixtures (same outcomes with and without the plugin, no warnings, and the run time of both
printed); the lowest supported versions of every dependency (the floors pyproject.toml claims).
pytest-asyncio's cells (0.23 and 1.x, auto, strict, session loop) are in test_runners.py.
"""

from __future__ import annotations

import os
import pathlib
import re
import statistics
import subprocess
import textwrap
import time
import tomllib
from collections.abc import Callable

from _venvs import ROOT, venv

# The oldest pytest the plugin runs on (hook wrappers, config.stash); the package does not
# depend on pytest, so this is the floor a user's project may have.
PYTEST_FLOOR = "pytest==8.0.0"

ANYIO_PROJECT = '''
import pytest

pytestmark = pytest.mark.anyio

@pytest.fixture
async def seeded(isolated_redis):
    await isolated_redis.set("k", "v")
    return isolated_redis

async def test_redis_through_a_user_fixture(seeded):
    assert await seeded.get("k") == b"v"

async def test_database_and_fs(isolated_database, isolated_fs):
    await isolated_database.execute("create table t (x int)")
    assert await isolated_database.fetchval("select count(*) from t") == 0
    await isolated_fs.write_text("a.txt", "x")
    assert await isolated_fs.read_text("a.txt") == "x"

async def test_http(isolated_http):
    isolated_http.expect("GET", "/x").respond_json({"a": 1})
    assert (await isolated_http.client.get("/x")).json() == {"a": 1}

async def test_ws(isolated_ws):
    await isolated_ws.send_message({"type": "hello", "id": 1})
    assert await isolated_ws.receive_message() == {"type": "ack", "id": 1}

async def test_composite(comprehensive_test_environment):
    assert await comprehensive_test_environment["database"].fetchval("select to_regclass('t')") is None

def test_sync_code_gets_a_directory(isolated_fs):
    assert isolated_fs.path.is_dir()
'''
# What a project on anyio < 4.4 has (its default runs every anyio test on asyncio and trio).
ASYNCIO_BACKEND = '''
import pytest

@pytest.fixture
def anyio_backend():
    return "asyncio"
'''

TRIO_PROJECT = '''
import pytest
import isolated_env as ie

on_trio = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["trio"])]

def test_a_sync_test_runs_once(isolated_fs):
    assert isolated_fs.path.is_dir()

@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asking_for_asyncio(isolated_database):
    assert await isolated_database.fetchval("select 1") == 1

@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_fs_on_trio(isolated_fs):
    await isolated_fs.write_text("a.txt", "x")
    assert await isolated_fs.read_text("a.txt") == "x"

@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_http_on_trio(isolated_http):
    isolated_http.expect("GET", "/x").respond_json({"a": 1})
    assert (await isolated_http.client.get("/x")).json() == {"a": 1}

@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_ws_on_trio(isolated_ws):
    await isolated_ws.send_message({"type": "hello", "id": 1})
    assert await isolated_ws.receive_message() == {"type": "ack", "id": 1}

@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_asyncio_again_after_trio():
    import asyncio

    asyncio.get_running_loop()  # not the trio runner the last test's fixtures were set up in

@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_redis_on_trio_says_what_to_do():
    with pytest.raises(ie.ConfigError, match=r"^isolated_redis needs asyncio .* runs on trio; run the test on asyncio"):
        async with ie.isolated_redis():
            pass
'''

UNITTEST_PROJECT = '''
import unittest

from isolated_env.unittest import IsolatedEnvironmentTestCase

class Orders(IsolatedEnvironmentTestCase):
    async def test_insert(self):
        await self.database.execute("create table orders (id int)")
        await self.database.execute("insert into orders values (1)")
        self.assertEqual(await self.database.fetchval("select count(*) from orders"), 1)

    async def test_clean_again(self):
        self.assertIsNone(await self.database.fetchval("select to_regclass('orders')"))

    async def test_redis_and_fs(self):
        await self.redis.set("k", "v")
        await self.fs.write_text("a.txt", "x")
        self.assertEqual(await self.redis.get("k"), b"v")

class Plain(unittest.TestCase):
    def test_plain(self):
        self.assertEqual(1 + 1, 2)
'''

SYNC_PROJECT = '''
import psycopg
import redis

from isolated_env import sync

def test_database_dsn(isolated_database_dsn):
    with psycopg.connect(isolated_database_dsn) as conn:
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (1)")
        conn.commit()
        assert conn.execute("select count(*) from t").fetchone() == (1,)

def test_redis_url(isolated_redis_url):
    client = redis.Redis.from_url(isolated_redis_url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()

def test_a_directory(isolated_fs):
    (isolated_fs.path / "a.txt").write_text("x")

def test_sync_environment():
    with sync.Environment() as env:
        r = env.enter(sync.isolated_redis())
        r.client.set("k", "v")
        assert r.client.get("k") == b"v"
'''

NEVER_PROJECT = '''
import pytest

def test_add():
    assert 1 + 1 == 2

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(n):
    assert n > 0

def test_tmp_path(tmp_path):
    (tmp_path / "x").write_text("y")

@pytest.mark.skip(reason="shown as skipped")
def test_skipped():
    pass

@pytest.mark.xfail(strict=True)
def test_expected_failure():
    assert False

class TestGrouped:
    def test_method(self):
        assert "a".upper() == "A"
'''

LIGHT = ["psycopg[binary]>=3.1"]
VENVS = {
    "base": ([], "redis,sync"),
    "trio": (["trio"], "redis,tls"),
}


def _floors() -> list[str]:
    """Every dependency at the lowest version pyproject.toml allows (``>=X`` becomes ``==X``)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        found = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dep)
        assert found, f"{dep!r} in pyproject.toml has no floor (>=): give it one, tested here"
        pins.append(f"{found.group(1)}=={found.group(2)}")
    return [*pins, PYTEST_FLOOR]


def _python(cell: str) -> pathlib.Path:
    if cell == "floors":
        return venv("floors", _floors())
    requirements, extras = VENVS[cell]
    return venv(cell, ["pytest>=8", *requirements, *(LIGHT if "sync" in extras else [])], extras)


def _project(tmp_path: pathlib.Path, source: str, conftest: str = "", ini: str = "") -> pathlib.Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    (tmp_path / "test_project.py").write_text(source)
    if conftest:
        (tmp_path / "conftest.py").write_text(conftest)
    return tmp_path


def _pytest(python: pathlib.Path, project: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    env["ISOLATED_ENV_REQUIRE"] = "1"  # a missing service fails the cell instead of skipping it
    return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-rs", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


def _passed(result: subprocess.CompletedProcess[str], count: int) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(rf"\b{count} passed\b", out) and "skipped" not in out and "warning" not in out.lower(), out
    return out


def test_anyio_only_without_xdist(tmp_path: pathlib.Path) -> None:
    python = _python("base")
    for absent in ("xdist", "pytest_asyncio", "trio"):
        probe = subprocess.run([python, "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is installed in the anyio-only venv"
    out = _passed(_pytest(python, _project(tmp_path, ANYIO_PROJECT), "-q"), 6)
    assert "isolated_env: 6 tests used" in out, out


def test_trio_installed(tmp_path: pathlib.Path) -> None:
    out = _passed(_pytest(_python("trio"), _project(tmp_path, TRIO_PROJECT), "-v"), 7)
    ran = re.findall(r"::(\w+(?:\[\w+\])?) PASSED", out)
    assert sorted(ran) == sorted([
        "test_a_sync_test_runs_once", "test_asking_for_asyncio[asyncio]", "test_fs_on_trio[trio]",
        "test_http_on_trio[trio]", "test_ws_on_trio[trio]", "test_asyncio_again_after_trio[asyncio]",
        "test_redis_on_trio_says_what_to_do[trio]",
    ]), out


def test_the_resources_on_trio() -> None:
    # The suite's trio cases, from the checkout, with the trio venv (the suite's own venv has no trio).
    cases = ROOT / "tests" / "resources" / "trio_cases.py"
    _passed(_pytest(_python("trio"), ROOT, "-q", str(cases)), 11)


def test_unittest_project(tmp_path: pathlib.Path) -> None:
    python = _python("base")
    project = _project(tmp_path, UNITTEST_PROJECT)
    _passed(_pytest(python, project, "-q"), 4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")} | {"ISOLATED_ENV_REQUIRE": "1"}
    plain = subprocess.run([python, "-W", "error", "-m", "unittest", "-q", "test_project"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "Ran 4 tests" in plain.stderr and "OK" in plain.stderr, plain.stderr


def test_sync_only_project(tmp_path: pathlib.Path) -> None:
    _passed(_pytest(_python("base"), _project(tmp_path, SYNC_PROJECT), "-q"), 4)


def test_a_project_that_never_uses_the_fixtures(
    tmp_path: pathlib.Path, record_property: Callable[[str, object], None]
) -> None:
    python = _python("base")
    project = _project(tmp_path, NEVER_PROJECT, ini="xfail_strict = true\n")
    summary = re.compile(r"^=+ (.*) in [0-9.]+s", re.MULTILINE)
    outcomes = []
    for extra in ((), ("-p", "no:isolated_env")):
        result = _pytest(python, project, *extra)
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "warning" not in out.lower() and "isolated_env" not in out, out
        found = summary.search(out)
        assert found, out
        outcomes.append(found.group(1))
    assert outcomes[0] == outcomes[1] == "6 passed, 1 skipped, 1 xfailed", outcomes
    # The cost of merely having the plugin: printed (in the run's summary), never asserted.
    samples: dict[str, list[float]] = {"with the plugin": [], "with -p no:isolated_env": []}
    for _ in range(5):
        for name, extra in (("with the plugin", ()), ("with -p no:isolated_env", ("-p", "no:isolated_env"))):
            started = time.perf_counter()
            _pytest(python, project, "-q", *extra)
            samples[name].append((time.perf_counter() - started) * 1000)
    figures = {name: statistics.median(values) for name, values in samples.items()}
    record_property("figure", "never-uses-the-fixtures project, median pytest run of 5: " + ", ".join(
        f"{ms:.0f} ms {name}" for name, ms in figures.items()))


def test_lowest_supported_versions(tmp_path: pathlib.Path) -> None:
    python = _python("floors")
    versions = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                              check=True).stdout.lower().splitlines()
    for pin in _floors():
        name, _, version = pin.lower().partition("==")
        wanted = re.compile(rf"{re.escape(name)}=={re.escape(version)}(\.0)*")
        assert any(wanted.fullmatch(v) for v in versions), (pin, versions)
    out = _passed(_pytest(python, _project(tmp_path, ANYIO_PROJECT, conftest=ASYNCIO_BACKEND), "-q"), 6)
    assert "isolated_env: 6 tests used" in out, out
