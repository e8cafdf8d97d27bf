from __future__ import annotations

import unittest
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import isolated_env
from isolated_env.unittest import IsolatedEnvironmentTestCase

BACKENDS: list[int] = []


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

    async def test_previous_test_left_nothing(self) -> None:
        self.assertIsNone(await self.database.fetchval("SELECT to_regclass('items')"))
        self.assertEqual(await self.redis.dbsize(), 0)
        self.assertEqual(self.fs.listdir(), [])


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
