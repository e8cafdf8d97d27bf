"""IsolatedEnvironmentTestCase.asyncSetUpClassData: class data loaded once, every test starting from
it in a nested scope, no test seeing another's writes, the class's data released with the class."""

from __future__ import annotations

import unittest
from typing import Any, ClassVar

import isolated_env as ie
from isolated_env.unittest import IsolatedEnvironmentTestCase, close_shared_loop

SCHEMA = ie.PostgresTemplate(sql="CREATE TABLE orders (id int PRIMARY KEY, total int)")


def _run(*cases: type[unittest.TestCase]) -> unittest.TestResult:
    suite = unittest.TestSuite()
    for case in cases:
        suite.addTests(unittest.TestLoader().loadTestsFromTestCase(case))
    try:
        return unittest.TextTestRunner(verbosity=0).run(suite)
    finally:
        close_shared_loop()


def test_class_data_is_loaded_once_and_each_test_is_rolled_back_to_it() -> None:
    loads: list[str] = []
    seen: list[tuple[int, bool, bool]] = []

    class Orders(IsolatedEnvironmentTestCase):
        resources: ClassVar[dict[str, Any]] = {
            "database": lambda: ie.isolated_postgres(template=SCHEMA), "redis": "redis", "fs": "fs",
        }
        class_db: ClassVar[str] = ""

        async def asyncSetUpClassData(self, env: ie.Environment) -> None:
            await env["database"].executemany("INSERT INTO orders VALUES ($1, $2)", [(i, i) for i in range(100)])
            await env["redis"].set("currency", "EUR")
            await env["fs"].write_text("rates.csv", "EUR,1")
            loads.append(env["database"].database)

        async def _each(self, n: int) -> None:
            rows = await self.database.fetchval("SELECT count(*) FROM orders")
            seen.append((rows, await self.redis.exists("mine") == 0, not self.fs.exists("mine.txt")))
            self.assertEqual(await self.redis.get("currency"), b"EUR")
            self.assertTrue(self.fs.exists("rates.csv"))
            await self.database.execute("INSERT INTO orders VALUES ($1, 0)", 1000 + n)
            await self.database.execute("DELETE FROM orders WHERE id < 50")
            await self.redis.set("mine", n)
            await self.fs.write_text("mine.txt", "x")

        async def test_a(self) -> None:
            await self._each(1)

        async def test_b(self) -> None:
            await self._each(2)

        async def test_c_fails_after_writing(self) -> None:
            await self._each(3)
            self.fail("failing on purpose")

        async def test_d(self) -> None:
            await self._each(4)

    result = _run(Orders)
    assert result.testsRun == 4 and len(result.failures) == 1 and not result.errors, result.errors
    assert "failing on purpose" in result.failures[0][1]
    assert len(loads) == 1  # once for the class
    assert seen == [(100, True, True)] * 4  # every test saw the class's rows and none of another's writes


def test_without_class_data_every_test_gets_fresh_resources() -> None:
    counts: list[int] = []

    class Plain(IsolatedEnvironmentTestCase):
        resources: ClassVar[dict[str, Any]] = {"redis": "redis"}

        async def test_a(self) -> None:
            counts.append(await self.redis.dbsize())
            await self.redis.set("k", 1)

        async def test_b(self) -> None:
            counts.append(await self.redis.dbsize())
            await self.redis.set("k", 1)

    result = _run(Plain)
    assert result.wasSuccessful() and counts == [0, 0], (result.errors, counts)
