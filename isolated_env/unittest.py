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
from ._errors import ConfigError, ServerDied, ServiceUnavailable
from ._nesting import HeldEnvironment
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

    async def asyncSetUpClassData(self, env: Environment) -> None:
        """Override to load data once for the whole class (Django's ``setUpTestData``): runs in the
        class's own Environment before its first test; each test then starts from that state in a
        nested scope (a savepoint, a clone, copied keys and files) rolled back when it ends, so no
        test sees another's writes. Keep what later tests need on ``type(self)``, not ``self``."""

    async def _ie_hold(self, ready: asyncio.Future[None]) -> None:
        try:
            async with await self._ie_environment() as env:
                self.env = env
                for name in self.resources:
                    setattr(self, name, env[name])
                ready.set_result(None)
                await self._ie_done.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            raise

    async def _ie_fill(self, env: Environment) -> None:
        for name, factory in self.resources.items():
            make = spec(factory).factory() if isinstance(factory, str) else factory
            await env.enter(make(), name=name)

    async def _ie_environment(self) -> AbstractAsyncContextManager[Environment]:
        """The test's Environment: its own, or a nested scope of the class's when the class loads
        class data (:meth:`asyncSetUpClassData`)."""
        cls = type(self)
        if getattr(cls.asyncSetUpClassData, "__func__", cls.asyncSetUpClassData) is _NO_CLASS_DATA:
            return _Filled(self._ie_fill)
        held: HeldEnvironment | None = cls.__dict__.get("_ie_class_env")
        loop = asyncio.get_running_loop()
        if held is None or held.env is None:
            if not (self.share_event_loop and shares_loops()):
                raise ConfigError(
                    f"{cls.__qualname__}.asyncSetUpClassData needs the class's tests to share one event loop "
                    "(its connections live as long as the class): leave share_event_loop = True"
                )

            async def fill(env: Environment) -> None:
                await self._ie_fill(env)
                await self.asyncSetUpClassData(env)

            held = HeldEnvironment(loop, cls.__qualname__)
            await held.open(fill)
            cls._ie_class_env = held  # type: ignore[attr-defined]
        assert held.env is not None
        return held.env.nest()

    @classmethod
    def tearDownClass(cls) -> None:
        held: HeldEnvironment | None = cls.__dict__.get("_ie_class_env")
        if held is not None:
            del cls._ie_class_env  # type: ignore[attr-defined]
            held.close()  # the class's data goes with its Environment
        super().tearDownClass()

    async def asyncTearDown(self) -> None:
        try:
            self._ie_done.set()
            await self._ie_host
        finally:
            await super().asyncTearDown()


_NO_CLASS_DATA = IsolatedEnvironmentTestCase.asyncSetUpClassData


class _Filled:
    """A fresh Environment that ``fill`` enters the test's resources into."""

    def __init__(self, fill: Callable[[Environment], Any]) -> None:
        self._fill = fill
        self._env = Environment()

    async def __aenter__(self) -> Environment:
        env = await self._env.__aenter__()
        try:
            await self._fill(env)
        except BaseException as exc:
            await self._env.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return env

    async def __aexit__(self, *exc: Any) -> None:
        await self._env.__aexit__(*exc)


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
