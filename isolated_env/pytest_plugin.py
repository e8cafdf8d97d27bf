"""pytest plugin (entry point ``pytest11``): drop-in fixtures for real, isolated services.

Fixtures: ``isolated_env`` (an Environment per test), ``isolated_database``, ``isolated_redis``,
``isolated_fs`` and more; markers ``requires_postgres``/``requires_redis``/``requires_clickhouse``.
A missing service skips the test with the reason, or fails it under ``CI=true`` or
``--isolated-env-require``, so a CI run cannot pass by skipping everything. Built on anyio's pytest
plugin; the event loop is kept for the session (``isolated_env_loop_scope``) so pooled connections
live across tests.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import AsyncIterator, Generator
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import Any, NoReturn

import anyio
import pytest

from . import _metrics
from ._config import UNSET, resolve, set_layer
from ._environment import Environment
from ._errors import ConfigError, ServiceUnavailable
from ._runtime import open_scopes
from ._servers import registry

_SERVICES: dict[str, str] = {
    "requires_postgres": "postgres",
    "requires_redis": "redis",
    "requires_clickhouse": "clickhouse",
}


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
        help="keep the private database of a failed test and print how to reach it",
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


_config: pytest.Config | None = None
_before: _metrics.ProcessSnapshot | None = None
_worker_samples: dict[str, list[float]] = {}
_worker_leases: dict[str, int] = {"reused": 0, "created": 0}
_leak_problems: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    for marker, service in _SERVICES.items():
        config.addinivalue_line(
            "markers", f"{marker}: needs {service}; skipped (or failed under CI) when it is unavailable"
        )
    profile = config.getoption("--isolated-env-profile") or config.getini("isolated_env_profile")
    require = config.getoption("--isolated-env-require")
    if require is None:
        require = config.getini("isolated_env_require")
    set_layer({"profile": profile or UNSET, "require_services": require if require is not None else UNSET})
    if config.getoption("--isolated-env-keep-failed"):
        os.environ.setdefault("ISOLATED_ENV_KEEP_FAILED", "1")
    try:
        resolve()
    except ConfigError as exc:
        raise pytest.UsageError(f"isolated_env: {exc}") from None


def _require() -> bool:
    return resolve().require_services


def unavailable(exc: ServiceUnavailable) -> NoReturn:
    """Skip the test with the reason, or fail it when services are required (CI)."""
    if _require():
        pytest.fail(f"{exc} (required: CI=true or --isolated-env-require)", pytrace=False)
    pytest.skip(str(exc))


# -- markers ---------------------------------------------------------------------------------

_probe_results: dict[str, ServiceUnavailable | None] = {}


def _probe(service: str) -> ServiceUnavailable | None:
    if service in _probe_results:
        return _probe_results[service]
    result: list[ServiceUnavailable | None] = [None]

    async def check() -> None:
        settings = resolve()
        if service == "postgres":
            from ._servers import postgres

            await postgres.ensure_server(settings)
        elif service == "redis":
            from ._servers import redis

            await redis.ensure_server(settings)
        else:
            from ._servers import clickhouse

            await clickhouse.ensure_server(settings)

    def run() -> None:
        try:
            anyio.run(check)
        except ServiceUnavailable as exc:
            result[0] = exc
        except ImportError as exc:
            result[0] = ServiceUnavailable(service, f"its driver is not installed ({exc})",
                                           fix=f"pip install 'isolated-env[{service}]'")

    # A thread of its own: the session's event loop may exist (not running) in this one.
    thread = threading.Thread(target=run, name=f"isolated-env-probe-{service}")
    thread.start()
    thread.join()
    _probe_results[service] = result[0]
    return result[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, service in _SERVICES.items():
        if item.get_closest_marker(marker) is not None:
            problem = _probe(service)
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


_failed_key = pytest.StashKey[bool]()


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test behind ``request`` failed (for keep-on-failure teardown)."""
    return bool(request.node.stash.get(_failed_key, False))


# -- one event loop for the session ----------------------------------------------------------

_held_runner: tuple[tuple[str, str], ExitStack] | None = None


@pytest.fixture
def _isolated_env_loop(anyio_backend: Any, request: pytest.FixtureRequest) -> None:
    """Keep anyio's test runner (and so its event loop) alive between tests, so pooled
    connections are reused instead of reopened by every test."""
    global _held_runner
    if request.config.getini("isolated_env_loop_scope") != "session":
        return
    from anyio.pytest_plugin import extract_backend_and_options, get_runner

    name, options = extract_backend_and_options(anyio_backend)
    key = (name, json.dumps(options, sort_keys=True, default=str))
    if _held_runner is not None:
        if _held_runner[0] == key:
            return
        _held_runner[1].close()
        _held_runner = None
    stack = ExitStack()
    stack.enter_context(get_runner(name, options))
    _held_runner = (key, stack)


def _release_runner() -> None:
    global _held_runner
    if _held_runner is not None:
        _held_runner[1].close()
        _held_runner = None


# -- fixtures --------------------------------------------------------------------------------


async def _enter(env: Environment, cm: AbstractAsyncContextManager[Any], name: str | None = None) -> Any:
    try:
        return await env.enter(cm, name=name)
    except ServiceUnavailable as exc:
        problem = exc
    unavailable(problem)  # outside the except block: the skip/fail should not chain the driver error


_kept: list[str] = []
_tests_served = 0


@pytest.fixture
async def isolated_env(
    anyio_backend: Any, _isolated_env_loop: None, request: pytest.FixtureRequest
) -> AsyncIterator[Environment]:
    """An Environment for one test: enter resources with ``await isolated_env.enter(...)``."""
    global _tests_served
    _tests_served += 1
    async with Environment() as env:
        yield env
        if failed(request):
            from .resources.postgres import mark_failed

            for name in env.keys():
                dsn = mark_failed(env[name])
                if dsn is not None:
                    _kept.append(f"{request.node.nodeid}: {dsn}")


@pytest.fixture
async def isolated_database(isolated_env: Environment) -> Any:
    """A PostgreSQL handle (asyncpg API) whose changes are rolled back after the test."""
    from .resources.postgres import isolated_postgres

    return await _enter(isolated_env, isolated_postgres())


@pytest.fixture
async def isolated_redis(isolated_env: Environment) -> Any:
    """A private Redis logical database (redis.asyncio API), flushed after the test."""
    from .resources.redis import isolated_redis as factory

    return await _enter(isolated_env, factory())


@pytest.fixture
async def isolated_fs(isolated_env: Environment) -> Any:
    """A private scratch directory, removed after the test."""
    from .resources.fs import isolated_fs as factory

    return await _enter(isolated_env, factory())


@pytest.fixture
async def isolated_clickhouse(isolated_env: Environment) -> Any:
    """A ClickHouse client bound to a private database, dropped after the test."""
    from .resources.clickhouse import isolated_clickhouse as factory

    return await _enter(isolated_env, factory())


@pytest.fixture
async def isolated_ws(isolated_env: Environment) -> Any:
    """A real WebSocket server on a loopback port with a connected client."""
    from .resources.ws import isolated_ws as factory

    return await _enter(isolated_env, factory())


@pytest.fixture
async def isolated_http(isolated_env: Environment) -> Any:
    """A real HTTP server with expectations, and an httpx client pointed at it."""
    from .resources.http import isolated_http as factory

    return await _enter(isolated_env, factory())


@pytest.fixture
async def websocket_integration_environment(isolated_env: Environment) -> Environment:
    """An environment with a WebSocket server and client: ``env['websocket']``."""
    from .resources.ws import isolated_ws as factory

    await _enter(isolated_env, factory())
    return isolated_env


@pytest.fixture
async def comprehensive_test_environment(isolated_env: Environment) -> Environment:
    """PostgreSQL, Redis, WebSocket, HTTP and a directory together: ``env['database']``,
    ``['redis']``, ``['websocket']``, ``['http']``, ``['fs']``."""
    from .resources.fs import isolated_fs as fs
    from .resources.http import isolated_http as http
    from .resources.postgres import isolated_postgres
    from .resources.redis import isolated_redis as redis
    from .resources.ws import isolated_ws as ws

    for factory in (isolated_postgres, redis, ws, http, fs):
        await _enter(isolated_env, factory())
    return isolated_env


# -- session bookkeeping ---------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    global _before
    _metrics.reset_timings()
    _before = _metrics.snapshot()


def _server_pids() -> set[int]:
    pids: set[int] = set()
    root = resolve().state_dir
    for kind in ("postgres", "redis", "clickhouse"):
        state = registry.status(kind, root)
        if state is not None:
            pids.add(state.pid)
    return pids


def _leased_slots() -> list[str]:
    out = []
    for scope in open_scopes():
        for pool in scope.pools.values():
            stats = pool.statistics()
            if stats.leased:
                out.append(f"{stats.leased} still leased from {stats.name}")
    return out


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leased = _leased_slots()
    _release_runner()  # closes the session's loop, and with it every pool
    if "isolated_env.unittest" in sys.modules:  # unittest cases run by pytest share a loop of their own
        sys.modules["isolated_env.unittest"].close_shared_loop()
    server_pids = _server_pids()
    registry.release_all()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["isolated_env"] = json.dumps(
            {"samples": _metrics.setup_samples(), "leases": _metrics.lease_counts(), "tests": _tests_served}
        )
    if _before is None or session.config.getoption("--isolated-env-no-leak-check"):
        return
    if not _metrics.setup_samples():
        return  # this session used no isolated_env resource
    leak = _metrics.LeakReport.between(_before, _metrics.snapshot())
    problems = leased + leak.problems(fd_slack=4, thread_slack=4)
    problems = [p for p in problems if "child processes" not in p]
    children = sorted(leak.children - server_pids)
    if children:
        problems.append(f"child processes still running: {children}")
    if problems:
        _leak_problems.extend(problems)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    raw = getattr(node, "workeroutput", {}).get("isolated_env")
    if not raw:
        return
    data = json.loads(raw)
    for kind, samples in data["samples"].items():
        _worker_samples.setdefault(kind, []).extend(samples)
    for key, value in data["leases"].items():
        _worker_leases[key] = _worker_leases.get(key, 0) + value
    _worker_leases["tests"] = _worker_leases.get("tests", 0) + data.get("tests", 0)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    summary = _metrics.setup_summary(_worker_samples)
    if summary:
        counts = _metrics.lease_counts()
        reused = counts["reused"] + _worker_leases.get("reused", 0)
        total = reused + counts["created"] + _worker_leases.get("created", 0)
        served = sum(s.count for s in summary.values())
        tests = _tests_served + _worker_leases.get("tests", 0)
        parts = ", ".join(f"{kind} {s.p50_ms:.2f} ms" for kind, s in sorted(summary.items()))
        ratio = f"{100 * reused / total:.1f}%" if total else "n/a"
        terminalreporter.write_line(
            f"isolated_env: {tests} tests served, {served} resources; setup p50: {parts}; pool hit ratio {ratio}"
        )
    if _kept:
        terminalreporter.write_line(
            "isolated_env kept the databases of failed tests (remove with `isolated-env prune --kept`):"
        )
        for line in _kept:
            terminalreporter.write_line(f"  {line}")
    if _leak_problems:
        terminalreporter.write_line(
            "isolated_env: resources left behind at session end: " + "; ".join(_leak_problems), red=True
        )
