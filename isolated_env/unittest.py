"""unittest adapter: ``IsolatedEnvironmentTestCase`` gives each test ``self.env`` and its handles.

The environment lives in one host task for the whole test: resources that hold a cancel scope or a
task group (servers) must be entered and left in the same task, and unittest runs ``asyncSetUp``
and ``asyncTearDown`` as different tasks.

Every test of the process runs on one shared event loop (unittest would make one per test), so
pooled connections and leased databases are reused instead of reopened: ~0.5 ms instead of ~20 ms
per test. ``share_event_loop = False`` on a class restores unittest's loop per test.
"""

from __future__ import annotations

import asyncio
import atexit
import unittest
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from ._config import resolve
from ._drivers.unittest_runner import shares_loops
from ._environment import Environment
from ._errors import ServerDied, ServiceUnavailable
from ._registry import spec

__all__ = ["IsolatedEnvironmentTestCase"]


class IsolatedEnvironmentTestCase(unittest.IsolatedAsyncioTestCase):
    """A test case whose every test gets fresh isolated resources as attributes.

    ``resources`` maps attribute names to a registered resource's kind (or to any factory); the
    default gives ``self.database``, ``self.redis`` and ``self.fs``. An unavailable service skips
    the test, or fails it when services are required (``CI=true``, ``ISOLATED_ENV_REQUIRE=1``).
    """

    resources: ClassVar[Mapping[str, str | Callable[[], AbstractAsyncContextManager[Any]]]] = {
        "database": "postgres",
        "redis": "redis",
        "fs": "fs",
    }
    share_event_loop: ClassVar[bool] = True
    env: Environment

    # unittest's hooks for its per-test asyncio.Runner: the one private seam, see
    # isolated_env._drivers.unittest_runner (used only where it was tested).
    def _setupAsyncioRunner(self) -> None:
        if not (self.share_event_loop and shares_loops()):
            super()._setupAsyncioRunner()  # type: ignore[misc]
            return
        self._asyncioRunner = _shared_runner()

    def _tearDownAsyncioRunner(self) -> None:
        if not (self.share_event_loop and shares_loops()):
            super()._tearDownAsyncioRunner()  # type: ignore[misc]
        # the shared runner stays open for the next test; it is closed at exit

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ie_done = asyncio.Event()
        self._ie_host = asyncio.create_task(self._ie_hold(ready), name=f"isolated-env host for {self.id()}")
        try:
            await ready
        except ServiceUnavailable as exc:
            await self._ie_host
            if resolve().require_services or isinstance(exc, ServerDied):
                raise
            self.skipTest(str(exc))

    async def _ie_hold(self, ready: asyncio.Future[None]) -> None:
        try:
            async with Environment() as env:
                self.env = env
                for name, factory in self.resources.items():
                    make = spec(factory).factory() if isinstance(factory, str) else factory
                    setattr(self, name, await env.enter(make(), name=name))
                ready.set_result(None)
                await self._ie_done.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            raise

    async def asyncTearDown(self) -> None:
        try:
            self._ie_done.set()
            await self._ie_host
        finally:
            await super().asyncTearDown()


_runner: asyncio.Runner | None = None


def _shared_runner() -> asyncio.Runner:
    global _runner
    if _runner is None:
        # debug=None follows PYTHONASYNCIODEBUG and -X dev, instead of paying debug mode's cost
        # (and its "Executing <Task> took 0.2 seconds" lines) in every user's run.
        _runner = asyncio.Runner(debug=None)
        # Closing runs the loop's async-generator shutdown, which closes the pools inside the loop
        # (before the servers are released: atexit runs this first, it was registered later).
        atexit.register(close_shared_loop)
    return _runner


def close_shared_loop() -> None:
    """Close the event loop shared by the test cases (and with it their pools); the next test opens
    a new one. Called at exit, and by the pytest plugin at the end of a session."""
    global _runner
    runner, _runner = _runner, None
    if runner is not None:
        runner.close()
