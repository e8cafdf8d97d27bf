"""Which event loop a pytest test runs in, and how the plugin's fixtures run in that same loop.

A fixture's resources must be opened in the loop the test awaits them in (drivers bind connections
to a loop), and entered and left in one task (anyio cancel scopes and task groups are per task).
Three kinds of test:

- run by anyio's plugin (the test uses ``anyio_backend``): anyio runs every fixture and the test in
  one task of its runner, so the plugin hands it the async fixtures and lets it;
- run by pytest-asyncio (an ``asyncio`` marker, set by its auto mode or by the user): the fixtures
  run in the loop pytest-asyncio made for that test's loop scope, in one host task of ours that
  stays in the loop from setup to teardown (:class:`LoopHost`);
- anything else (a sync test using a fixture): one asyncio loop of the plugin's own for the session.

Finding pytest-asyncio's loop touches its fixture names, which are not public API: that is done in
:func:`asyncio_test_loop` only, on the versions it was tested with.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from ._drivers import _seams
from ._errors import ConfigError
from ._runtime import close_current_runtime, has_runtime

__all__ = [
    "PYTEST_ASYNCIO_TESTED", "LoopHost", "asyncio_test_loop", "close_with_loop", "is_anyio_test", "is_asyncio_test",
]

T = TypeVar("T")
PYTEST_ASYNCIO_TESTED = ">=0.23,<2"


def is_anyio_test(request: pytest.FixtureRequest) -> bool:
    """Whether anyio's plugin runs this test (it requests ``anyio_backend``)."""
    return "anyio_backend" in request.fixturenames


def is_asyncio_test(request: pytest.FixtureRequest) -> bool:
    """Whether pytest-asyncio runs this test (its marker, which its auto mode adds)."""
    node = request.node
    return (
        request.config.pluginmanager.has_plugin("asyncio")
        and isinstance(node, pytest.Function)
        and node.get_closest_marker("asyncio") is not None
    )


def _loop_of(value: object) -> asyncio.AbstractEventLoop | None:
    if isinstance(value, asyncio.AbstractEventLoop):
        return value
    if isinstance(value, asyncio.Runner):
        return value.get_loop()
    return None


def _is_loop_fixture(name: str) -> bool:
    return (name.startswith("_") and name.endswith("_scoped_runner")) or name in (
        "event_loop", "_session_event_loop") or name.endswith("::<event_loop>")


def _async_requester(request: pytest.FixtureRequest) -> Any:
    """The FixtureDef of the nearest fixture up the chain of requests that pytest-asyncio runs
    (a user's async fixture requesting ours), or None when the test itself is the nearest.

    The chain is pytest's ``_parent_request``/``_fixturedef`` (private, there since pytest 3);
    without them the test's loop is used, as before."""
    mode = request.config.getoption("asyncio_mode", None) or request.config.getini("asyncio_mode")
    current = getattr(request, "_parent_request", None)
    while current is not None:
        fixturedef = getattr(current, "_fixturedef", None)
        if fixturedef is None:
            return None  # the test's own request
        func = getattr(fixturedef.func, "__func__", fixturedef.func)
        if getattr(func, "_force_asyncio_fixture", False) or (
            str(mode) == "auto" and (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func))
        ):
            return fixturedef
        current = getattr(current, "_parent_request", None)
    return None


def _requester_loop_fixture(request: pytest.FixtureRequest) -> str | None:
    """The name of the fixture giving the loop of the async fixture that requests ours, if any.

    0.23 adds that fixture to the async fixture's argnames at collection; 1.x picks
    ``_<loop_scope>_scoped_runner`` at setup, from the fixture's ``loop_scope`` (set by
    ``pytest_asyncio.fixture``), else ``asyncio_default_fixture_loop_scope``, else its own scope.
    """
    fixturedef = _async_requester(request)
    if fixturedef is None:
        return None
    for name in fixturedef.argnames:
        if _is_loop_fixture(name):
            return str(name)
    func = getattr(fixturedef.func, "__func__", fixturedef.func)
    default = request.config.getini("asyncio_default_fixture_loop_scope")
    if default == "fixture-scope":
        default = None
    scope = getattr(func, "_loop_scope", None) or default or fixturedef.scope
    return f"_{scope}_scoped_runner"


def asyncio_test_loop(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoop:
    """The loop pytest-asyncio runs the fixture that requests ours in: the loop of the nearest
    async fixture up the chain of requests, else the test's own loop (and the fixtures of its
    loop scope).

    pytest-asyncio adds the fixture providing the test's loop to its fixture names before setup:
    ``_<scope>_scoped_runner`` (1.x, an ``asyncio.Runner``), ``event_loop``, ``_session_event_loop``
    or ``<node id>::<event_loop>`` (0.23, the loop itself).
    """
    version = _seams.installed_version("pytest-asyncio")
    if not _seams.tested("pytest-asyncio", PYTEST_ASYNCIO_TESTED):
        raise ConfigError(
            f"isolated_env's fixtures were tested with pytest-asyncio {PYTEST_ASYNCIO_TESTED}, and "
            f"{version} is installed; install a tested version, or run the test with anyio's plugin "
            "(@pytest.mark.anyio)"
        )
    requester = _requester_loop_fixture(request)
    names = [name for name in request.fixturenames if _is_loop_fixture(name)]
    # pytest-asyncio appends the test's own loop last; a requesting fixture's loop comes first.
    for name in reversed([*names, requester] if requester is not None else names):
        loop = _loop_of(request.getfixturevalue(name))
        if loop is not None:
            return loop
    raise ConfigError(
        f"pytest-asyncio {version} runs {request.node.nodeid}, but its event loop could not be found; "
        "run the test with anyio's plugin (@pytest.mark.anyio) instead"
    )


_LOOP_FIXTURES = ("_scoped_runner", "event_loop", "<event_loop>")


def close_with_loop(fixturedef: pytest.FixtureDef[Any], value: object) -> None:
    """When ``value`` is a pytest-asyncio loop (or Runner), close its Runtime (pools, background
    tasks) just before the loop closes: pytest-asyncio < 1.0 closes loops without running
    ``shutdown_asyncgens``, which would leave every pooled connection of a test's loop open."""
    if not fixturedef.argname.endswith(_LOOP_FIXTURES):
        return
    loop = _loop_of(value)
    if loop is not None:
        fixturedef.addfinalizer(functools.partial(_close_runtime, loop))


def _close_runtime(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_closed() or loop.is_running() or not has_runtime(loop):
        return
    loop.run_until_complete(close_current_runtime())


class LoopHost:
    """One task in ``loop`` that runs every call it is given, in order, until :meth:`stop`.

    The plugin's fixtures set up and tear down through it, so an Environment is entered and exited
    in the same task although pytest runs setup and teardown at different times. Between calls the
    task only waits: nothing of ours runs while the test does. A call is one ``run_until_complete``
    of the call's own future (no task of its own per call); the host task's end fails a call
    still waiting, with the reason.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._context = contextvars.copy_context()

    async def _serve(self) -> None:
        assert self._queue is not None
        while (item := await self._queue.get()) is not None:
            fn, future = item
            try:
                result = await fn()
            except BaseException as exc:  # handed to the caller, which re-raises it in the test
                if not future.done():
                    future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                if not future.done():
                    future.set_result(result)

    def _ended(self, future: asyncio.Future[Any], task: asyncio.Task[None]) -> None:
        if future.done():
            return
        problem = task.exception() if not task.cancelled() else None
        future.set_exception(problem or RuntimeError("isolated_env's fixture host task ended before the call ran"))

    def call(self, fn: Callable[[], Awaitable[T]], *, last: bool = False) -> T:
        """Run ``fn()`` in the host task and return its result (from sync code: the loop is idle);
        ``last``: the host task ends after it."""
        if self.loop.is_running():
            raise ConfigError(
                "an isolated_env fixture was requested while its event loop runs (request.getfixturevalue "
                "inside an async test?); request it as a test or fixture argument instead"
            )
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = self.loop.create_task(self._serve(), name="isolated-env-fixtures", context=self._context)
        assert self._task is not None
        task = self._task
        future: asyncio.Future[T] = self.loop.create_future()
        ended = functools.partial(self._ended, future)
        if task.done():
            ended(task)
        else:
            self._queue.put_nowait((fn, future))
            if last:
                self._queue.put_nowait(None)
            task.add_done_callback(ended)
        try:
            return self.loop.run_until_complete(future)
        finally:
            task.remove_done_callback(ended)

    def stop(self) -> None:
        """End the host task (after the last call) and let go of it and its loop."""
        task, queue, self._task, self._queue = self._task, self._queue, None, None
        if queue is None or task is None or self.loop.is_closed():
            return
        if not task.done():
            queue.put_nowait(None)
            self.loop.run_until_complete(task)
        elif not task.cancelled():
            task.result()
