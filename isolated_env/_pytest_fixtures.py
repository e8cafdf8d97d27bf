"""The fixtures the pytest plugin generates from the resource registry (the composite environments
are in :mod:`._pytest_presets`).

Each fixture is a sync function (run in the test's loop through the plugin's host task) carrying an
async twin, which the plugin hands to anyio's plugin when anyio runs the test.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from ._registry import ResourceSpec

if TYPE_CHECKING:
    from ._environment import Environment

__all__ = ["resource_fixtures", "with_async_variant"]


class _Host(Protocol):
    def call(self, fn: Callable[[], Awaitable[Any]]) -> Any: ...


HostOf = Callable[[pytest.FixtureRequest], _Host]
Enter = Callable[["Environment", AbstractAsyncContextManager[Any]], Awaitable[Any]]

def with_async_variant(sync: Callable[..., Any], variant: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``sync`` as having the async twin ``variant`` (for tests anyio runs)."""
    sync._isolated_env_async = variant  # type: ignore[attr-defined]
    return sync


def _fixture(name: str, doc: str | None, host_of: HostOf, enter: Callable[[Environment], Awaitable[Any]]) -> Any:
    async def variant(isolated_env: Environment, request: pytest.FixtureRequest) -> Any:
        return await enter(isolated_env)

    def fixture(isolated_env: Environment, request: pytest.FixtureRequest) -> Any:
        return host_of(request).call(lambda: enter(isolated_env))

    fixture.__name__ = name
    fixture.__doc__ = doc
    return pytest.fixture(name=name)(with_async_variant(fixture, variant))


def resource_fixtures(registered: tuple[ResourceSpec, ...], host_of: HostOf, enter: Enter) -> object:
    """A plugin (a module object, as pytest reads fixtures from) with one fixture per registered
    resource name."""
    holder = types.ModuleType("isolated_env.pytest_plugin.resource_fixtures")

    def one(entry: ResourceSpec) -> Callable[[Environment], Awaitable[Any]]:
        return lambda env: enter(env, entry.factory()())

    for entry in registered:
        for name in entry.fixtures:
            setattr(holder, name, _fixture(name, entry.doc, host_of, one(entry)))
    return holder
