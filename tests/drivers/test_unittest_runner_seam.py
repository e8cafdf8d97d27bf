"""Canary: what isolated_env relies on in CPython's IsolatedAsyncioTestCase still holds."""

from __future__ import annotations

import asyncio
import inspect
import io
import unittest

from isolated_env._drivers import unittest_runner


def test_this_python_has_the_hooks_we_override() -> None:
    assert unittest_runner.shares_loops(), (
        "IsolatedAsyncioTestCase changed (or this Python is outside the tested range "
        f"{unittest_runner.TESTED}): re-check _setupAsyncioRunner/_tearDownAsyncioRunner"
    )


def test_the_hooks_make_and_close_the_runner_the_test_uses() -> None:
    setup = inspect.getsource(unittest.IsolatedAsyncioTestCase._setupAsyncioRunner)  # type: ignore[attr-defined]
    teardown = inspect.getsource(unittest.IsolatedAsyncioTestCase._tearDownAsyncioRunner)  # type: ignore[attr-defined]
    assert "_asyncioRunner" in setup and "asyncio.Runner" in setup
    assert "_asyncioRunner" in teardown and "close" in teardown


def test_a_runner_set_in_the_hook_is_the_loop_tests_run_on() -> None:
    runner = asyncio.Runner()
    loops: list[asyncio.AbstractEventLoop] = []

    class Case(unittest.IsolatedAsyncioTestCase):
        def _setupAsyncioRunner(self) -> None:
            self._asyncioRunner = runner

        def _tearDownAsyncioRunner(self) -> None:
            pass

        async def test_one(self) -> None:
            loops.append(asyncio.get_running_loop())

        async def test_two(self) -> None:
            loops.append(asyncio.get_running_loop())

    try:
        result = unittest.TextTestRunner(stream=io.StringIO()).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(Case)
        )
        assert result.wasSuccessful() and len(loops) == 2
        assert loops[0] is loops[1], "the tests did not run on the runner the hook supplied"
    finally:
        runner.close()
