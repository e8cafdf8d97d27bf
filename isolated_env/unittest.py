"""unittest adapter: ``IsolatedEnvironmentTestCase`` gives each test ``self.env`` and its handles.

The environment lives in one host task for the whole test: resources that hold a cancel scope or a
task group (servers) must be entered and left in the same task, and unittest runs ``asyncSetUp``
and ``asyncTearDown`` as different tasks.
"""

from __future__ import annotations

import asyncio
import unittest
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from ._config import resolve
from ._environment import Environment
from ._errors import ServiceUnavailable
from .resources.fs import isolated_fs
from .resources.postgres import isolated_postgres
from .resources.redis import isolated_redis

__all__ = ["IsolatedEnvironmentTestCase"]


class IsolatedEnvironmentTestCase(unittest.IsolatedAsyncioTestCase):
    """A test case whose every test gets fresh isolated resources as attributes.

    ``resources`` maps attribute names to factories; the default gives ``self.database``,
    ``self.redis`` and ``self.fs``. An unavailable service skips the test, or fails it when
    services are required (``CI=true``, ``ISOLATED_ENV_REQUIRE=1``).
    """

    resources: ClassVar[Mapping[str, Callable[[], AbstractAsyncContextManager[Any]]]] = {
        "database": isolated_postgres,
        "redis": isolated_redis,
        "fs": isolated_fs,
    }
    env: Environment

    async def asyncSetUp(self) -> None:
        await super().asyncSetUp()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ie_done = asyncio.Event()
        self._ie_host = asyncio.create_task(self._ie_hold(ready), name=f"isolated-env host for {self.id()}")
        try:
            await ready
        except ServiceUnavailable as exc:
            await self._ie_host
            if resolve().require_services:
                raise
            self.skipTest(str(exc))

    async def _ie_hold(self, ready: asyncio.Future[None]) -> None:
        try:
            async with Environment() as env:
                self.env = env
                for name, factory in self.resources.items():
                    setattr(self, name, await env.enter(factory(), name=name))
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


