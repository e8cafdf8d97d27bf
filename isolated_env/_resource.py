"""The shape shared by every ``isolated_*`` factory: an async context manager with a kind name,
timed setup and a shielded, time-bounded teardown."""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Generic, ParamSpec, Protocol, TypeVar, runtime_checkable

import anyio

from . import _metrics
from ._config import Settings, resolve
from ._errors import TeardownError

__all__ = ["Resettable", "Resource", "current_settings", "resource"]

H = TypeVar("H")
P = ParamSpec("P")

_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("isolated_env_settings", default=None)


def current_settings() -> Settings:
    """Settings of the enclosing Environment, or freshly resolved ones for a standalone resource."""
    return _settings.get() or resolve()


@runtime_checkable
class Resettable(Protocol):
    """A handle that can return to pristine state without being torn down (``Environment.reset``)."""

    async def _ie_reset(self) -> None: ...


class Resource(Generic[H]):
    """An async context manager yielding a handle; ``kind`` names it inside an Environment."""

    def __init__(self, kind: str, cm: AbstractAsyncContextManager[H]) -> None:
        self.kind = kind
        self._cm = cm
        self._timeout = 30.0
        self.setup_ms: float | None = None
        self.teardown_ms: float | None = None

    async def __aenter__(self) -> H:
        settings = _settings.get()
        token = None
        if settings is None:  # standalone: resolve once for the wrapper and the resource alike
            settings = resolve()
            token = _settings.set(settings)
        self._timeout = settings.teardown_timeout
        started = time.perf_counter()
        try:
            handle = await self._cm.__aenter__()
        finally:
            if token is not None:
                _settings.reset(token)
        self.setup_ms = (time.perf_counter() - started) * 1000
        _metrics.record_setup(self.kind, self.setup_ms)
        return handle

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        started = time.perf_counter()
        # Shielded: a cancelled or timed-out test still cleans up; bounded so a hung server cannot
        # hang the suite.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self._timeout
            suppress = await self._cm.__aexit__(exc_type, exc, tb)
        self.teardown_ms = (time.perf_counter() - started) * 1000
        _metrics.record_teardown(self.kind, self.teardown_ms)
        if scope.cancelled_caught:
            raise TeardownError(
                f"cleanup of {self.kind} did not finish within {self._timeout:g} s; raise "
                f"ISOLATED_ENV_TEARDOWN_TIMEOUT if the server is just slow"
            )
        return suppress


def resource(kind: str) -> Callable[[Callable[P, AsyncIterator[H]]], Callable[P, Resource[H]]]:
    """Turn a one-``yield`` async generator into a factory of :class:`Resource` (setup above the
    yield, cleanup below it, side by side)."""

    def decorate(fn: Callable[P, AsyncIterator[H]]) -> Callable[P, Resource[H]]:
        acm = asynccontextmanager(fn)

        @functools.wraps(fn)
        def factory(*args: P.args, **kwargs: P.kwargs) -> Resource[H]:
            return Resource(kind, acm(*args, **kwargs))

        return factory

    return decorate


def with_settings(settings: Settings) -> contextvars.Token[Settings | None]:
    return _settings.set(settings)


def restore_settings(token: contextvars.Token[Settings | None]) -> None:
    _settings.reset(token)

