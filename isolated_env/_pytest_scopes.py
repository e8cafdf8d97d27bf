"""``environment_fixture()``: a pytest fixture of named resources, set up once per test or once per
class (module, package, session) with every test of the scope starting from that state.

With ``scope="function"`` each test gets an Environment of its own, ``setup`` run in it. With a wider
scope the Environment and its ``setup`` live as long as the scope (in one task of the event loop its
first test ran in, left when the scope's node is torn down) and each test gets a nested scope of it
(:meth:`Environment.nest`): a savepoint, a clone, a copy of the keys or of the directory, undone when
the test ends. The fixture itself is always function-scoped, so it works under anyio's plugin,
pytest-asyncio and in sync tests alike (the plugin's host tasks, :mod:`._pytest_loops`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from ._errors import ConfigError, ServiceUnavailable
from ._pytest_fixtures import KINDS_ATTR, with_async_variant

if TYPE_CHECKING:  # loaded by the first test that uses a fixture: loading the plugin imports no event loop
    from ._environment import Environment
    from ._nesting import HeldEnvironment

__all__ = ["environment_fixture"]

SCOPES = ("function", "class", "module", "package", "session")
Setup = Callable[["Environment"], Awaitable[Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
    scope: str
    setup: Setup | None
    configs: tuple[Mapping[str, Any], ...]
    parametrized: bool


def environment_fixture(
    *,
    scope: str = "function",
    setup: Setup | None = None,
    params: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
    ids: Sequence[str] | None = None,
    name: str | None = None,
    **resources: Any,
) -> Any:
    """A pytest fixture giving each test an Environment holding ``resources`` (name → an
    ``isolated_*()`` resource, its factory, or a registered kind such as ``"postgres"``), after
    ``await setup(env)``.

    ``scope="class"`` (or module, package, session) runs ``setup`` once for the scope; each test then
    starts from that state and its changes are undone when it ends, so the scope's data is untouched
    (docs/scopes.md). ``params`` runs the tests once per configuration: a list (or a dict id → entry)
    of mappings merged over ``resources``, e.g. ``{"database": ie.isolated_postgres(mode="database")}``.
    Assign it in a conftest or test module; the fixture's name is the variable's (or ``name``).
    """
    if scope not in SCOPES:
        raise ConfigError(f"environment_fixture(scope={scope!r}): scope is one of {', '.join(SCOPES)}")
    if setup is not None and not callable(setup):
        raise ConfigError(f"environment_fixture(setup={setup!r}): setup is an async function taking the Environment")
    if isinstance(params, Mapping):
        ids = list(params) if ids is None else ids
        params = list(params.values())
    configs = tuple({**resources, **entry} for entry in params) if params else (dict(resources),)
    if not any(configs):
        raise ConfigError("environment_fixture(): name at least one resource, e.g. database=ie.isolated_postgres()")
    for config in configs:
        for key, value in config.items():
            if not (isinstance(value, str) or callable(value) or hasattr(value, "__aenter__")):
                raise ConfigError(f"environment_fixture({key}={value!r}): give an isolated_*() resource or a factory")
    spec = _Spec(scope, setup, configs, bool(params))

    def fixture(request: pytest.FixtureRequest) -> Any:
        from .pytest_plugin import _hosted

        yield from _hosted(request, _environment(request, spec))

    async def variant(request: pytest.FixtureRequest) -> AsyncIterator[Environment]:
        from .pytest_plugin import _hold_anyio_runner

        _hold_anyio_runner(request)
        async for env in _environment(request, spec):
            yield env

    fixture.__doc__ = f"An environment of {', '.join(configs[0])} ({scope} scope)."
    # What it enters, for the servers started ahead of the first test (_pytest_prestart).
    kinds = {_kind_of(value) for config in configs for value in config.values()} - {None}
    setattr(fixture, KINDS_ATTR, frozenset(kinds))
    marker = pytest.fixture(name=name, params=list(range(len(configs))) if params else None, ids=ids)
    return marker(with_async_variant(fixture, variant))


def _kind_of(value: Any) -> str | None:
    """The registered name of an environment's resource: a kind, a resource or its factory."""
    if isinstance(value, str):
        return value
    kind = getattr(value, "kind", None) or getattr(getattr(value, "resource_class", None), "kind", None)
    return kind if isinstance(kind, str) else None


async def _fill(env: Environment, config: Mapping[str, Any], setup: Setup | None) -> None:
    from ._nesting import fresh
    from .pytest_plugin import _enter

    for key, value in config.items():
        await _enter(env, fresh(value), name=key)
    if setup is not None:
        await setup(env)


async def _environment(request: pytest.FixtureRequest, spec: _Spec) -> AsyncIterator[Environment]:
    from ._contract import Outcome
    from ._environment import Environment
    from .pytest_plugin import _state, failed, unavailable

    index = request.param if spec.parametrized else 0
    config = spec.configs[index]
    if spec.scope == "function":
        env = Environment(leak_check=False)
        async with env:
            await _fill(env, config, spec.setup)
            yield env
            if failed(request):
                env.outcome = Outcome.FAILED
    else:
        problem: ServiceUnavailable | None = None
        try:
            outer = await _outer(request, spec, index)
            nested = outer.nest()
            env = await nested.__aenter__()
        except ServiceUnavailable as exc:
            problem = exc
        if problem is not None:
            unavailable(problem)
        try:
            yield env
        except BaseException as exc:
            await nested.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if failed(request):
            env.outcome = Outcome.FAILED
        await nested.__aexit__(None, None, None)
    _state(request.config).kept.extend(f"{request.node.nodeid}: {kept}" for kept in env.kept)


# -- the wider scope's environment -----------------------------------------------------------

_held_key = pytest.StashKey[dict[tuple[int, int], "HeldEnvironment"]]()
_RANK = {s: n for n, s in enumerate(SCOPES)}


def _scope_node(request: pytest.FixtureRequest, scope: str) -> Any:
    kinds = {"class": (pytest.Class, pytest.Module), "module": (pytest.Module,), "package": (pytest.Package,)}
    for kind in kinds.get(scope, ()):
        node = request.node.getparent(kind)
        if node is not None:
            return node
    return request.session


def _loop_scope(request: pytest.FixtureRequest) -> str | None:
    """The scope of the loop pytest-asyncio runs the test in (None: not pytest-asyncio, or unknown)."""
    from . import _pytest_loops

    if "anyio_backend" in request.fixturenames or not _pytest_loops.is_asyncio_test(request):
        return None
    for name in reversed(request.fixturenames):
        if name.startswith("_") and name.endswith("_scoped_runner"):
            return name[1:-len("_scoped_runner")]
        if name == "event_loop":
            return "function"
        if name == "_session_event_loop":
            return "session"
    return None


def _check_loop(request: pytest.FixtureRequest, scope: str) -> None:
    from .pytest_plugin import _state

    where = f"environment_fixture(scope={scope!r})"
    loop_scope = _loop_scope(request)
    if loop_scope is not None and _RANK.get(loop_scope, 0) < _RANK[scope]:
        raise ConfigError(
            f"{where} keeps its connections in one event loop for the whole {scope}, but pytest-asyncio runs "
            f"{request.node.nodeid} in a loop of its {loop_scope}; run the {scope}'s tests in one loop: "
            f"@pytest.mark.asyncio(loop_scope={scope!r}) (or asyncio_default_test_loop_scope = session), "
            "or use anyio's plugin"
        )
    if "anyio_backend" in request.fixturenames and _state(request.config).runner is None:
        raise ConfigError(
            f"{where} keeps its connections in one event loop for the whole {scope}, and anyio's plugin gives "
            "each test a loop of its own here; set isolated_env_loop_scope = session in the ini (the default)"
        )


async def _outer(request: pytest.FixtureRequest, spec: _Spec, index: int) -> Environment:
    import asyncio

    from ._nesting import HeldEnvironment

    node = _scope_node(request, spec.scope)
    table: dict[tuple[int, int], HeldEnvironment] = node.stash.setdefault(_held_key, {})
    key = (id(spec), index)
    loop = asyncio.get_running_loop()
    held = table.get(key)
    if held is not None and held.env is not None:
        if held.loop is not loop:
            raise ConfigError(
                f"{request.node.nodeid} runs in another event loop than the first test of {held.where}, whose "
                f"environment it shares; run the {spec.scope}'s tests in one loop (see docs/scopes.md)"
            )
        return held.env
    _check_loop(request, spec.scope)
    held = HeldEnvironment(loop, node.nodeid or "the session")
    # A failed setup is tried again by the next test of the scope.
    env = await held.open(functools.partial(_fill, config=spec.configs[index], setup=spec.setup))
    table[key] = held
    node.addfinalizer(functools.partial(_close, table, key))
    return env


def _close(table: dict[tuple[int, int], HeldEnvironment], key: tuple[int, int]) -> None:
    held = table.pop(key, None)
    if held is not None:
        held.close()
