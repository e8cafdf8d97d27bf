"""pytest plugin (entry point ``pytest11``): drop-in fixtures for real, isolated services.

Generated from the resource registry: a fixture ``isolated_<kind>`` (and one per alias, e.g.
``isolated_database``) and a marker ``requires_<kind>`` for every registered resource, plus
``isolated_env`` (an Environment per test) and the report's composite environments. A missing
service skips the test with the reason, or fails it under ``CI=true`` or ``--isolated-env-require``,
so a CI run cannot pass by skipping everything. Built on anyio's pytest plugin; the event loop is
kept for the session (``isolated_env_loop_scope``) so pooled connections live across tests.

Importing this module imports no driver, no event loop and no metrics (psutil): a resource's module
loads when its fixture is used, the rest with the first fixture or resource (see ``_pytest_session``).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import AsyncIterator, Generator
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from ._config import UNSET, resolve, set_layer
from ._errors import ConfigError, ServerDied, ServiceUnavailable
from ._pytest_fixtures import ENTERED, enter_together, resource_fixtures, serve_through, with_async_variant
from ._registry import ResourceSpec, specs

if TYPE_CHECKING:  # loaded when a fixture or hook first needs them: a run that uses none pays nothing
    import asyncio

    from . import _metrics, _pytest_loops
    from ._environment import Environment


@dataclasses.dataclass
class _State:
    """Everything the plugin keeps for one pytest run (``config.stash``)."""

    before: _metrics.ProcessSnapshot | None = None
    workers: list[_metrics.Figures] = dataclasses.field(default_factory=list)
    leak_problems: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    tests_served: int = 0
    served_at_start: int = 0
    probes: dict[str, ServiceUnavailable | None] = dataclasses.field(default_factory=dict)
    runner: tuple[tuple[str, str], ExitStack] | None = None
    own_loop: asyncio.Runner | None = None


_state_key = pytest.StashKey[_State]()
_failed_key = pytest.StashKey[bool]()
_host_key = pytest.StashKey["_pytest_loops.LoopHost"]()
_users_key = pytest.StashKey[int]()  # how many of a test's fixtures run in its host task


def _state(config: pytest.Config) -> _State:
    return config.stash[_state_key]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isolated_env", "isolated_env: real, isolated services")
    group.addoption(
        "--isolated-env-require", action="store_true", default=None,
        help="fail (instead of skip) tests whose service is unavailable; the default under CI=true",
    )
    group.addoption(
        "--isolated-env-profile", default=None,
        help="concurrency profile: dev (5), ci-fast (10), ci-thorough (20), production (50)",
    )
    group.addoption(
        "--isolated-env-keep-failed", action="store_true", default=None,
        help="keep the data of a failed test (database, keyspace, directory) and print how to reach it",
    )
    group.addoption(
        "--isolated-env-no-leak-check", action="store_true", default=False,
        help="do not fail the run when resources are left behind at session end",
    )
    parser.addini("isolated_env_profile", "concurrency profile (dev, ci-fast, ci-thorough, production)", default=None)
    parser.addini(
        "isolated_env_require", "fail instead of skip when a service is unavailable", type="bool", default=None
    )
    parser.addini(
        "isolated_env_loop_scope",
        "'session' keeps one event loop for all tests so pooled connections persist; 'test' does not",
        default="session",
    )


def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """The servers this project's last run used start now, while the project's conftests and test
    modules import (:mod:`._pytest_prestart`)."""
    from ._pytest_prestart import start_early

    start_early(early_config)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_state_key] = _State()
    try:
        registered = specs()
    except ConfigError as exc:
        raise pytest.UsageError(f"isolated_env: {exc}") from None
    for entry in registered:
        config.addinivalue_line(
            "markers", f"requires_{entry.kind}: needs {entry.kind}; skipped (or failed under CI) when it is unavailable"
        )
    profile = config.getoption("--isolated-env-profile") or config.getini("isolated_env_profile")
    require = config.getoption("--isolated-env-require")
    if require is None:
        require = config.getini("isolated_env_require")
    set_layer({
        "profile": profile or UNSET,
        "require_services": require if require is not None else UNSET,
        "keep_failed": True if config.getoption("--isolated-env-keep-failed") else UNSET,
    })
    try:
        resolve()
    except ConfigError as exc:
        raise pytest.UsageError(f"isolated_env: {exc}") from None
    config.pluginmanager.register(resource_fixtures(registered, _enter), "isolated_env_resources")
    config.pluginmanager.import_plugin("isolated_env._pytest_sync")
    config.pluginmanager.import_plugin("isolated_env._pytest_session")
    config.pluginmanager.import_plugin("isolated_env._pytest_presets")
    config.pluginmanager.import_plugin("isolated_env._pytest_load")
    from . import _pytest_prestart  # imported already when the last run's servers started early

    config.pluginmanager.register(_pytest_prestart, "isolated_env._pytest_prestart")


def unavailable(exc: ServiceUnavailable) -> NoReturn:
    """Skip the test with the reason, or fail it when services are required (CI). A server that
    died under the test is no reason to skip: that fails."""
    if isinstance(exc, ServerDied):
        raise exc
    if resolve().require_services:
        pytest.fail(f"{exc} (required: CI=true or --isolated-env-require)", pytrace=False)
    pytest.skip(str(exc))


# -- markers ---------------------------------------------------------------------------------


async def probe(entry: ResourceSpec) -> None:
    """Raise ServiceUnavailable when ``entry``'s service cannot be had (its server, its driver)."""
    try:
        cls = entry.resource_class()
        own = getattr(cls, "probe", None)
        if own is not None:
            await own(resolve())
        elif entry.provider is not None:
            from ._servers._provider import provider

            await provider(entry.provider).ensure(resolve())
    except ImportError as exc:
        extra = f"pip install 'isolated-env[{entry.extra}]'" if entry.extra else "install its package"
        raise ServiceUnavailable(entry.kind, f"its driver is not installed ({exc})", fix=extra) from exc


def _probe(config: pytest.Config, entry: ResourceSpec) -> ServiceUnavailable | None:
    probes = _state(config).probes
    if entry.kind in probes:
        return probes[entry.kind]
    result: list[ServiceUnavailable | None] = [None]

    def run() -> None:
        import anyio

        try:
            anyio.run(probe, entry)
        except ServiceUnavailable as exc:
            result[0] = exc

    # A thread of its own: the session's event loop may exist (not running) in this one.
    thread = threading.Thread(target=run, name=f"isolated-env-probe-{entry.kind}")
    thread.start()
    thread.join()
    probes[entry.kind] = result[0]
    return result[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _state(item.config).runner is not None:
        _unmark_backend()
    marks = {mark.name for mark in item.iter_markers()}  # one walk up the nodes, not one per kind
    if not marks:
        return
    for entry in specs():
        if f"requires_{entry.kind}" in marks:
            problem = _probe(item.config, entry)
            if problem is not None:
                unavailable(problem)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_failed_key] = report.failed
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test behind ``request`` failed (for keep-on-failure teardown)."""
    return bool(request.node.stash.get(_failed_key, False))


# -- which loop the fixtures run in ------------------------------------------------------------


def _hold_anyio_runner(request: pytest.FixtureRequest) -> None:
    """Keep anyio's test runner (and so its event loop) alive between anyio-run tests, so pooled
    connections are reused instead of reopened by every test."""
    if request.config.getini("isolated_env_loop_scope") != "session":
        return
    from ._drivers.anyio_runner import hold_runner, runner_key

    anyio_backend = request.getfixturevalue("anyio_backend")
    state = _state(request.config)
    key = runner_key(anyio_backend)
    if state.runner is not None:
        if state.runner[0] == key:
            return
        state.runner[1].close()
        state.runner = None
    state.runner = hold_runner(anyio_backend)


def _unmark_backend() -> None:
    """anyio's runner, while leased, names its backend in sniffio's context variable of the main
    thread. Held across tests, that would tell a sync test (and its fixtures) "asyncio is running
    in this thread", so it could not call ``anyio.run()``, ``asyncio.run()`` or ``trio.run()``.
    Unset it before each test: the runner's own tasks are told by their running loop instead, and
    anyio resets the variable when the lease ends (without sniffio, anyio keeps no such mark)."""
    try:
        import sniffio
    except ImportError:
        return
    sniffio.current_async_library_cvar.set(None)


def _release_runner(state: _State) -> None:
    if state.runner is not None:
        state.runner[1].close()
        state.runner = None
    if state.own_loop is not None:
        state.own_loop.close()  # shutdown_asyncgens closes its runtime's pools
        state.own_loop = None


def _host(request: pytest.FixtureRequest) -> _pytest_loops.LoopHost:
    """The host task the test's fixtures run in: in pytest-asyncio's loop for this test, or in the
    plugin's own loop for a test no async plugin runs."""
    host: _pytest_loops.LoopHost | None = request.node.stash.get(_host_key, None)
    if host is not None:
        return host
    from . import _pytest_loops
    if _pytest_loops.is_asyncio_test(request):
        try:
            loop = _pytest_loops.asyncio_test_loop(request)
        except ConfigError as exc:
            raise pytest.UsageError(f"isolated_env: {exc}") from None
    else:
        state = _state(request.config)
        if state.own_loop is None:
            import asyncio

            # A factory: the thread's current loop (pytest-asyncio < 1.0 keeps one) is not replaced.
            state.own_loop = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        loop = state.own_loop.get_loop()
    request.node.stash[_host_key] = host = _pytest_loops.LoopHost(loop)
    return host


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[None, Any, Any]:  # noqa: E501
    variant = getattr(fixturedef.func, "_isolated_env_async", None)
    if (variant is not None and "anyio_backend" in request.fixturenames  # _pytest_loops.is_anyio_test
            and fixturedef.argname not in request.node.stash.get(ENTERED, ())):  # not entered with the env
        # anyio runs the test: hand it the async fixture, which it runs in the test's own task.
        # anyio < 4.4 also adds ``anyio_backend`` to the fixture's argnames for good: undo both, or a
        # later sync test using the fixture would need ``anyio_backend`` too.
        sync, argnames, fixturedef.func = fixturedef.func, fixturedef.argnames, variant  # type: ignore[misc]
        try:
            return (yield)
        finally:
            fixturedef.func, fixturedef.argnames = sync, argnames  # type: ignore[misc]
    result = yield
    if fixturedef.argname == "anyio_backend":
        _drop_other_runner(_state(request.config), result)
    elif fixturedef.argname.endswith(_LOOP_FIXTURES):  # pytest-asyncio's loops only: others import nothing
        from . import _pytest_loops

        _pytest_loops.close_with_loop(fixturedef, result)
    return result


_LOOP_FIXTURES = ("_scoped_runner", "event_loop", "<event_loop>")


def _drop_other_runner(state: _State, anyio_backend: Any) -> None:
    """A test on another backend is next: let go of the runner held for the last one, or anyio
    (whose runner is shared while leased, whatever backend asks) would run it on the held one."""
    if state.runner is None:
        return
    from ._drivers.anyio_runner import runner_key

    if state.runner[0] != runner_key(anyio_backend):
        state.runner[1].close()
        state.runner = None


# -- fixtures --------------------------------------------------------------------------------


async def _enter(env: Environment, cm: AbstractAsyncContextManager[Any], name: str | None = None) -> Any:
    try:
        return await env.enter(cm, name=name)
    except ServiceUnavailable as exc:
        problem = exc
    unavailable(problem)  # outside the except block: the skip/fail should not chain the driver error


async def _environment(request: pytest.FixtureRequest) -> AsyncIterator[Environment]:
    from ._contract import Outcome
    from ._environment import Environment

    env = Environment(leak_check=False)  # the session's leak check covers every test's environment
    try:
        async with env:
            await enter_together(request, env)
            yield env
            if failed(request):
                env.outcome = Outcome.FAILED
    finally:
        if ENTERED in request.node.stash:  # the item outlives the test: its handles must not
            del request.node.stash[ENTERED]
    _state(request.config).kept.extend(f"{request.node.nodeid}: {kept}" for kept in env.kept)


async def _isolated_env_async(request: pytest.FixtureRequest) -> AsyncIterator[Environment]:
    _hold_anyio_runner(request)
    async for env in _environment(request):
        yield env


def _isolated_env(request: pytest.FixtureRequest) -> Generator[Environment, None, None]:
    """An Environment for one test: enter resources with ``await isolated_env.enter(...)``."""
    yield from _hosted(request, _environment(request), serve=True)


def _hosted(
    request: pytest.FixtureRequest, gen: AsyncIterator[Any], *, serve: bool = False
) -> Generator[Any, None, None]:
    """Run the one-yield async generator ``gen`` of a sync fixture in the test's host task; the
    last of a test's fixtures to be torn down ends the host task. With ``serve``, the resource
    fixtures of the environment it yields run through that host task too."""
    host = _host(request)
    stash = request.node.stash
    stash[_users_key] = stash.get(_users_key, 0) + 1
    try:
        value = host.call(gen.__anext__)
        if serve:
            serve_through(value, host)
        yield value
        host.call(functools.partial(_drain, gen), last=stash[_users_key] == 1)
    finally:
        stash[_users_key] -= 1
        if stash[_users_key] == 0:
            host.stop()
            del stash[_host_key]  # the item outlives the test: its loop and host task must not


async def _drain(gen: AsyncIterator[Any]) -> None:
    async for _ in gen:
        raise RuntimeError("isolated_env's environment fixture yielded twice")


isolated_env = pytest.fixture(name="isolated_env")(with_async_variant(_isolated_env, _isolated_env_async))
