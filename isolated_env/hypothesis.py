"""Property tests over an environment: every Hypothesis example starts from pristine resources.

    from hypothesis import given, strategies as st
    from isolated_env.hypothesis import pristine_examples

    @pristine_examples(max_examples=300)
    @given(emails=st.lists(st.emails()))
    async def test_signup(isolated_env, isolated_database, emails):
        ...  # the database is as the template left it, whatever the previous example did

Hypothesis runs the body of one test many times with the same fixtures. ``pristine_examples``
awaits ``env.reset()`` on every :class:`~isolated_env.Environment` among the test's arguments before
each example (a rollback, a ``FLUSHDB``, an emptied directory: the resources stay up), and sets the
Hypothesis settings such a test needs. Needs the ``hypothesis`` extra:
``pip install 'isolated-env[hypothesis]'``; this module imports it only when it is used.
"""

from __future__ import annotations

import functools
import inspect
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from types import ModuleType
from typing import Any, TypeVar

from ._environment import Environment
from ._errors import ConfigError, MissingDependencyError

__all__ = ["DEFAULT_DEADLINE", "pristine_examples"]

DEFAULT_DEADLINE = timedelta(seconds=1)
"""How long a warm example may take. Generous on purpose: the services are real, and a shared CI
machine is slow at times; a property test that is truly too slow still stands out."""

T = TypeVar("T", bound=Callable[..., Any])


def _hypothesis() -> ModuleType:
    try:
        import hypothesis
    except ImportError as exc:
        raise MissingDependencyError("hypothesis", "hypothesis", "isolated_env.hypothesis") from exc
    return hypothesis


def _timedelta(deadline: timedelta | float | None) -> timedelta | None:
    """A deadline as Hypothesis takes it: a timedelta, a number of milliseconds, or None."""
    if deadline is None or isinstance(deadline, timedelta):
        return deadline
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
        raise ConfigError(f"deadline={deadline!r}: give a timedelta, a positive number of milliseconds, or None")
    return timedelta(milliseconds=deadline)


def pristine_examples(*, deadline: timedelta | float | None = DEFAULT_DEADLINE, **settings: Any) -> Callable[[T], T]:
    """Reset the test's environment before every Hypothesis example; use it above ``@given``,
    in place of ``@settings``.

    ``settings`` are Hypothesis settings (``max_examples=500``, ``derandomize=True``, ...).
    ``deadline`` (a timedelta or milliseconds, ``None`` for none) applies to warm examples only:
    an example that enters a resource (the first use of a server or a template is slow) and the
    first example of each test are exempt, and the reset itself is not counted. The fixture
    health check is suppressed, since the reset is exactly what it asks for, and so is the check
    on slow input generation: on a loaded shared CI machine it measures the machine, not the test.
    """
    hypothesis = _hypothesis()
    limit = _timedelta(deadline)
    suppressed = [
        *settings.pop("suppress_health_check", ()),
        hypothesis.HealthCheck.function_scoped_fixture,
        hypothesis.HealthCheck.too_slow,
    ]
    chosen = hypothesis.settings(deadline=None, suppress_health_check=suppressed, **settings)

    def decorate(test: T) -> T:
        handle: Any = getattr(test, "hypothesis", None)
        inner = getattr(handle, "inner_test", None)
        if inner is None:
            raise ConfigError(
                f"@pristine_examples(...) must sit above @given(...) on {getattr(test, '__name__', test)!r}: "
                "it wraps each example of the test Hypothesis made"
            )
        if not inspect.iscoroutinefunction(inner):
            raise ConfigError(
                f"{getattr(test, '__name__', test)!r} must be `async def`: env.reset() is awaited before each example"
            )
        # HypothesisHandle.inner_test is Hypothesis' documented place for per-example logic.
        handle.inner_test = _resetting(inner, limit, hypothesis.errors.DeadlineExceeded)
        try:
            decorated: T = chosen(test)
        except hypothesis.errors.InvalidArgument as exc:
            exc.add_note("pass the settings to @pristine_examples(...) instead of a separate @settings")
            raise
        return decorated

    return decorate


def _resetting(
    inner: Callable[..., Any], limit: timedelta | None, deadline_exceeded: type[BaseException]
) -> Callable[..., Any]:
    warm: weakref.WeakSet[Environment] = weakref.WeakSet()

    @functools.wraps(inner)
    async def example(*args: Any, **kwargs: Any) -> Any:
        envs = [value for value in (*args, *kwargs.values()) if isinstance(value, Environment)]
        if not envs:
            raise ConfigError(
                f"{inner.__name__!r} has no Environment among its arguments, so there is nothing to reset: "
                "take the isolated_env fixture (or a fixture returning an Environment)"
            )
        for env in envs:
            await env.reset()
        checked = limit is not None and all(env in warm for env in envs)
        entered = [len(env.keys()) for env in envs]
        start = time.perf_counter()
        result = await inner(*args, **kwargs)
        runtime = time.perf_counter() - start
        warm.update(envs)
        if checked and limit is not None and [len(env.keys()) for env in envs] == entered:
            if runtime > limit.total_seconds():
                raise deadline_exceeded(timedelta(seconds=runtime), limit)
        return result

    return example
