"""The pytest plugin's session bookkeeping: the leak check, the summary, xdist workers' figures, and
the slow-start progress line through pytest's terminal.

A run that never sets up a resource imports none of the metrics (nor psutil): the leak check's
baseline is taken just before the first resource is set up (:mod:`isolated_env._usage`), the
summary is only printed when something was used, and the per-test count only looks at the metrics
once they are loaded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from . import _usage
from ._config import resolve
from ._registry import specs
from .pytest_plugin import _release_runner, _state

if TYPE_CHECKING:
    from types import ModuleType

__all__: list[str] = []


def _metrics() -> ModuleType | None:
    """The metrics module once anything of ours loaded it (no resource was set up before that)."""
    return sys.modules.get("isolated_env._metrics")


def _served() -> int:
    metrics = _metrics()
    return metrics.served() if metrics is not None else 0


def _drop(line: str) -> None:
    pass


_waiting_key = pytest.StashKey[list[Callable[[], None]]]()


def _before_first_use(config: pytest.Config, callback: Callable[[], None]) -> None:
    config.stash.setdefault(_waiting_key, []).append(callback)
    _usage.before_first_use(callback)


def pytest_configure(config: pytest.Config) -> None:
    _before_first_use(config, functools.partial(_progress_through_terminal, config))


def _progress_through_terminal(config: pytest.Config) -> None:
    """Progress lines (a slow first server start) go through the terminal reporter, outside pytest's
    capture, so they are seen while the run waits; an xdist worker's terminal is not shown, so a
    worker drops them (the controller starts nothing and prints none: documented in docs/pytest.md).
    Installed before the first resource is set up: no server starts before that."""
    from ._servers import _diagnostics

    if hasattr(config, "workerinput"):
        _diagnostics.set_progress_sink(_drop)
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return  # -p no:terminal: the line goes to stderr
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line(line)

    _diagnostics.set_progress_sink(write)


def pytest_unconfigure(config: pytest.Config) -> None:
    for callback in config.stash.get(_waiting_key, []):  # this run used no resource: nobody should run them
        _usage.forget(callback)
    if "isolated_env._servers._diagnostics" in sys.modules:
        sys.modules["isolated_env._servers._diagnostics"].set_progress_sink(None)


def pytest_sessionstart(session: pytest.Session) -> None:
    state = _state(session.config)

    def baseline() -> None:
        from . import _metrics

        state.before = _metrics.snapshot()

    if _metrics() is not None:  # something of ours already ran in this process (pytester, a conftest)
        _metrics().reset_timings()  # type: ignore[union-attr]
        state.served_at_start = _served()
    _before_first_use(session.config, baseline)


def _server_pids() -> set[int]:
    from ._servers import registry

    pids: set[int] = set()
    root = resolve().state_dir
    for entry in specs():
        if entry.provider is None:
            continue
        try:
            state = registry.status(entry.provider, root)
        except OSError:  # a state directory that cannot be made: no server of ours runs there
            continue
        if state is not None:
            pids.add(state.pid)
    return pids


def _leased_slots() -> list[str]:
    if "isolated_env._runtime" not in sys.modules:
        return []
    out = []
    for runtime in sys.modules["isolated_env._runtime"].open_runtimes():
        for pool in runtime.pools.values():
            stats = pool.statistics()
            if stats.leased:
                out.append(f"{stats.leased} still leased from {stats.name}")
    return out


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    leased = _leased_slots()
    _release_runner(state)  # closes the session's loop, and with it every pool
    if "isolated_env.unittest" in sys.modules:  # unittest cases run by pytest share a loop of their own
        sys.modules["isolated_env.unittest"].close_shared_loop()
    if "isolated_env._servers.registry" in sys.modules:  # no server was joined otherwise
        server_pids = _server_pids()
        sys.modules["isolated_env._servers.registry"].release_all()
    else:
        server_pids = set()
    metrics = _metrics()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and metrics is not None:
        workeroutput["isolated_env"] = json.dumps(metrics.Figures.of_process(state.tests_served).to_json()
                                                  | {"kept": state.kept})
    if state.before is None or metrics is None or session.config.getoption("--isolated-env-no-leak-check"):
        return  # no resource was set up in this session
    if metrics.served() == state.served_at_start:
        return
    leak = metrics.LeakReport.between(state.before, metrics.snapshot())
    problems = leased + leak.problems(fd_slack=4, thread_slack=4)
    problems = [p for p in problems if "child processes" not in p]
    children = sorted(leak.children - server_pids)
    if children:
        problems.append(f"child processes still running: {children}")
    if problems:
        state.leak_problems.extend(problems)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    raw = getattr(node, "workeroutput", {}).get("isolated_env")
    if not raw:
        return
    from . import _metrics as metrics

    state = _state(node.config)
    data = json.loads(raw)
    state.workers.append(metrics.Figures.from_json(data))
    state.kept.extend(data.get("kept", []))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    before = _served()
    try:
        return (yield)
    finally:
        if _served() != before:  # the test set up a resource (a fixture, or its own code)
            _state(item.config).tests_served += 1


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    """A test's setup beyond its resources' own (pytest's fixtures, ours, the environment around
    them) is the summary's "fixture machinery"; two clock reads a test."""
    metrics = _metrics()
    served, accounted = _served(), (metrics.accounted_ms() if metrics is not None else 0.0)
    started = time.perf_counter()
    try:
        return (yield)
    finally:
        if _served() != served:
            metrics = _metrics()
            if metrics is not None:
                took = (time.perf_counter() - started) * 1000
                metrics.add_machinery(took - (metrics.accounted_ms() - accounted))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = _state(config)
    metrics = _metrics()
    if metrics is not None or state.workers:
        from . import _metrics as loaded

        known = {entry.kind for entry in specs()}
        own = [loaded.Figures.of_process(state.tests_served)] if metrics is not None else []
        for line in loaded.Figures.merge([*own, *state.workers]).summary_lines(known):
            terminalreporter.write_line(line)
    if state.kept:
        terminalreporter.write_line(
            "isolated_env kept the data of failed tests (remove with `isolated-env prune --kept`):"
        )
        for line in state.kept:
            terminalreporter.write_line(f"  {line}")
    if state.leak_problems:
        terminalreporter.write_line(
            "isolated_env: resources left behind at session end: " + "; ".join(state.leak_problems), red=True
        )
