"""The fixtures the pytest plugin generates from the resource registry (the composite environments
are in :mod:`._pytest_presets`).

Each fixture is a sync function (run in the test's loop through the plugin's host task) carrying an
async twin, which the plugin hands to anyio's plugin when anyio runs the test.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from ._registry import ResourceSpec

if TYPE_CHECKING:
    from ._environment import Environment

__all__ = ["ENTERED", "enter_together", "resource_fixtures", "serve_through", "with_async_variant"]

ENTERED = pytest.StashKey[dict[str, Any]]()
"""On a test item while its environment is open: the handles of the isolated fixtures it requests,
entered together when the environment opened."""


class _Host(Protocol):
    def call(self, fn: Callable[[], Awaitable[Any]]) -> Any: ...


Enter = Callable[["Environment", AbstractAsyncContextManager[Any]], Awaitable[Any]]

KINDS_ATTR = "_isolated_env_kinds"
"""Set on a fixture function (``environment_fixture``'s) to the resource kinds it enters: the servers
started ahead of the first test (:mod:`._pytest_prestart`) include theirs."""


def with_async_variant(sync: Callable[..., Any], variant: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``sync`` as having the async twin ``variant`` (for tests anyio runs)."""
    sync._isolated_env_async = variant  # type: ignore[attr-defined]
    return sync


# Found through the test's environment, so the fixtures need no ``request`` (pytest makes a
# FixtureDef, and inspects a signature, for every fixture that asks for it, at every test).
_entered: weakref.WeakKeyDictionary[Environment, dict[str, Any]] = weakref.WeakKeyDictionary()
_hosts: weakref.WeakKeyDictionary[Environment, _Host] = weakref.WeakKeyDictionary()


def serve_through(env: Environment, host: _Host) -> None:
    """The fixtures of ``env``'s test not entered with it run through ``host`` (the plugin's sync path)."""
    _hosts[env] = host


def _fixture(name: str, doc: str | None, enter: Callable[[Environment], Awaitable[Any]]) -> Any:
    async def variant(isolated_env: Environment) -> Any:
        return await enter(isolated_env)

    def fixture(isolated_env: Environment) -> Any:
        entered = _entered.get(isolated_env)
        if entered is not None and name in entered:
            return entered[name]  # entered with the environment: no hop into the loop of its own
        host = _hosts.get(isolated_env)
        if host is None:
            raise RuntimeError(f"isolated_env: {name} found no event loop to run in (a plugin ordering problem)")
        return host.call(lambda: enter(isolated_env))

    fixture.__name__ = name
    fixture.__doc__ = doc
    fixture._isolated_env_enter = variant._isolated_env_enter = enter  # type: ignore[attr-defined]
    return pytest.fixture(name=name)(with_async_variant(fixture, variant))


async def enter_together(request: pytest.FixtureRequest, env: Environment) -> None:
    """Enter every isolated fixture the test requests into ``env``, in the order pytest sets them
    up, while the environment opens: one hop into the test's loop (one fixture run by anyio) for
    all of them instead of one per fixture. A fixture of ours overridden by one of the user's (the
    closest definition of the name is not ours) is left to pytest, as is one requested dynamically
    (``request.getfixturevalue``). Torn down with the environment, in reverse, as before."""
    definitions = getattr(request, "_arg2fixturedefs", None)  # pytest's, since 3.0; else one by one
    if not isinstance(definitions, dict):
        return
    entered: dict[str, Any] = {}
    request.node.stash[ENTERED] = _entered[env] = entered
    for name in request.fixturenames:
        chain = definitions.get(name)
        enter = getattr(chain[-1].func, "_isolated_env_enter", None) if chain else None
        if enter is not None:
            entered[name] = await enter(env)


def resource_fixtures(registered: tuple[ResourceSpec, ...], enter: Enter) -> object:
    """A plugin (a module object, as pytest reads fixtures from) with one fixture per registered
    resource name."""
    holder = types.ModuleType("isolated_env.pytest_plugin.resource_fixtures")

    def one(entry: ResourceSpec) -> Callable[[Environment], Awaitable[Any]]:
        return lambda env: enter(env, entry.factory()())

    for entry in registered:
        for name in entry.fixtures:
            setattr(holder, name, _fixture(name, entry.doc, one(entry)))
    return holder
