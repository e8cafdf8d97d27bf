from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

import isolated_env
from isolated_env.unittest import IsolatedEnvironmentTestCase, close_shared_loop

BACKENDS: list[int] = []


@pytest.fixture(autouse=True, scope="module")
def _close_the_shared_loop() -> Iterator[None]:
    """The cases here run on the unittest adapter's shared loop, whose pools keep connections on
    this process's transaction-mode work database; close it when the module is done, so the
    connections do not outlive it and hold up a later test's retirement of that database."""
    yield
    close_shared_loop()


class Inventory(IsolatedEnvironmentTestCase):
    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        BACKENDS.append(self.database.get_server_pid())

    async def test_real_services_as_attributes(self) -> None:
        await self.database.execute("CREATE TABLE items (sku text PRIMARY KEY)")
        await self.database.execute("INSERT INTO items VALUES ('a')")
        await self.redis.set("items:count", 1)
        await self.fs.write_text("export.csv", "sku\na\n")
        self.assertEqual(await self.database.fetchval("SELECT count(*) FROM items"), 1)
        self.assertIs(self.env["database"], self.database)

    async def test_names_reach_the_same_handles(self) -> None:
        self.assertIs(self.env["redis"], self.redis)
        self.assertIs(self.env["fs"], self.fs)


class OnlyFiles(IsolatedEnvironmentTestCase):
    resources: ClassVar[Mapping[str, Callable[[], Any]]] = {"scratch": isolated_env.isolated_fs}

    async def test_custom_resources(self) -> None:
        await self.scratch.write_text("x.txt", "x")
        self.assertEqual(self.env.keys(), ["scratch"])


def test_unittest_cases_pass_under_the_unittest_runner() -> None:
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for case in (Inventory, OnlyFiles):
        suite.addTests(loader.loadTestsFromTestCase(case))
    BACKENDS.clear()
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    assert result.testsRun == 3
    assert result.wasSuccessful(), result.failures + result.errors
    # the tests share one event loop, so the second test reused the first one's pooled connection
    assert len(BACKENDS) == 2 and BACKENDS[0] == BACKENDS[1]


# Two tests in an order of their own (unittest and pytest would sort them by name): the second
# checks, on the servers themselves, that nothing of the first one's data is left.
ORDERED = '''
import json
import os
import traceback
import unittest

import asyncpg
import redis.asyncio as aioredis

from isolated_env.unittest import IsolatedEnvironmentTestCase

TABLE = f"items_{os.getpid()}"
left = {}


class Inventory(IsolatedEnvironmentTestCase):
    async def test_leaves_state(self):
        await self.database.execute(f"CREATE TABLE {TABLE} (sku text PRIMARY KEY)")
        await self.database.execute(f"INSERT INTO {TABLE} VALUES ('a')")
        await self.redis.set("items:count", 1)
        await self.fs.write_text("export.csv", "sku\\na\\n")
        left.update(dsn=self.database.dsn, redis=self.redis.url, fs=self.fs.path)
        if os.environ.get("LEAVE_STATE") == "1":
            # cleanups run after asyncTearDown, i.e. after the environment let go of everything:
            # this puts back what a resource that failed to clean up would have left behind
            self.addAsyncCleanup(self.leave_state)

    async def leave_state(self):
        conn = await asyncpg.connect(left["dsn"])
        try:
            await conn.execute(f"CREATE TABLE {TABLE} (sku text PRIMARY KEY)")
        finally:
            await conn.close()
        client = aioredis.from_url(left["redis"])
        try:
            await client.set("items:count", 1)
        finally:
            await client.aclose()
        left["fs"].mkdir()
        (left["fs"] / "export.csv").write_text("sku\\na\\n")

    async def test_previous_test_left_nothing(self):
        self.assertTrue(left, "the test that leaves state did not run first")
        found = []
        if await self.database.fetchval("SELECT to_regclass($1)", TABLE) is not None:
            found.append(f"table {TABLE}")
        client = aioredis.from_url(left["redis"])  # the very database the first test had
        try:
            if await client.dbsize():
                found.append(f"keys in {left['redis']}")
        finally:
            await client.aclose()
        if left["fs"].exists():
            found.append(f"directory {left['fs']}")
        if found:
            self.fail("the previous test left: " + "; ".join(found))


def name(test):
    return test.id().rsplit(".", 1)[-1]


class Record(unittest.TestResult):
    """Each test's name, outcome and message, in the order they ran."""

    def __init__(self):
        super().__init__()
        self.log = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.log.append([name(test), "ok", ""])

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.log.append([name(test), "FAIL", str(err[1])])

    def addError(self, test, err):
        super().addError(test, err)
        self.log.append([name(test), "ERROR", "".join(traceback.format_exception(*err))])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.log.append([name(test), "skip", reason])


if __name__ == "__main__":
    result = Record()
    unittest.TestSuite([Inventory("test_leaves_state"), Inventory("test_previous_test_left_nothing")]).run(result)
    print(json.dumps(result.log))
'''


def run_ordered(tmp_path: Path, state_dir: Path, *, leave_state: bool) -> list[list[str]]:
    """Run the two tests in their order in a process of their own; each test's name, outcome and
    message. Fails on anything the process left open (printed as it exits)."""
    (tmp_path / "ordered_cases.py").write_text(ORDERED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS"))}
    # servers of its own: the check peeks at a Redis database after its lease ended, and the
    # dirty variant writes into one, which on shared servers another process may hold by then
    env["ISOLATED_ENV_STATE_DIR"] = str(state_dir)
    env["LEAVE_STATE"] = "1" if leave_state else "0"
    env["PYTHONWARNINGS"] = "always::ResourceWarning"
    result = subprocess.run([sys.executable, "ordered_cases.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    left_open = [line for line in result.stderr.splitlines()
                 if any(sign in line for sign in ("ResourceWarning", "Exception ignored", "Task was destroyed"))]
    assert not left_open, result.stderr
    log: list[list[str]] = json.loads(result.stdout)
    return log


def test_the_next_test_finds_nothing_of_the_previous_one(tmp_path: Path, private_state_dir: Path) -> None:
    log = run_ordered(tmp_path, private_state_dir, leave_state=False)
    assert log == [["test_leaves_state", "ok", ""], ["test_previous_test_left_nothing", "ok", ""]]


def test_the_check_catches_state_that_was_left_behind(tmp_path: Path, private_state_dir: Path) -> None:
    """The same two tests, with the first one's data put back after its cleanup: the check fails
    and names every leftover, so its passing above means something."""
    log = run_ordered(tmp_path, private_state_dir, leave_state=True)
    assert [(name, outcome) for name, outcome, _ in log] == [
        ("test_leaves_state", "ok"), ("test_previous_test_left_nothing", "FAIL")], log
    message = log[1][2]
    assert "table items_" in message and "; keys in " in message and "; directory /" in message, message
