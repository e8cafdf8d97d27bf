"""What an ``isolated_*()`` factory returns, and the decorator that makes a factory of a generator.

:class:`ResourceContext` wraps one :class:`~isolated_env.Resource` as an async context manager
(timed setup, shielded and time-bounded release with the test's Outcome); :func:`resource` turns a
one-``yield`` async generator into a resource, setup above the yield and cleanup below it.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, cast

import anyio

from . import _metrics, _usage
from ._config import Settings, resolve
from ._contract import Kept, Outcome, Resource, _settings
from ._errors import IsolatedEnvError, NestingUnsupported, TeardownError
from ._pool import PoolStatistics
from ._registry import require_backend

__all__ = ["ResourceContext", "report_kept", "resource"]

H = TypeVar("H")
P = ParamSpec("P")


class ResourceContext(Generic[H]):
    """What every ``isolated_*()`` factory returns: an async context manager around one
    :class:`Resource`, yielding its handle, with timed setup and a shielded, time-bounded release.

    ``outcome`` may be set before exit (the pytest plugin sets FAILED for a failed test); by
    default an exception leaving the block counts as a failure.
    """

    def __init__(self, resource: Resource[H]) -> None:
        self.resource = resource
        self.kind = resource.kind
        self.outcome: Outcome | None = None
        self.kept: Kept | None = None
        self.setup_ms: float | None = None
        self.teardown_ms: float | None = None
        self._handle: H | None = None
        self._entered = False
        self._timeout = 30.0
        self.remake: Callable[[], ResourceContext[H]] | None = None
        """Makes another context like this one, not entered (set by :func:`resource` factories)."""

    def __repr__(self) -> str:
        return f"<ResourceContext {self.kind}>"

    async def __aenter__(self) -> H:
        _usage.entering()
        require_backend(self.kind)
        settings = _settings.get()
        token = None
        if settings is None:  # standalone: resolve once for the wrapper and the resource alike
            settings = resolve()
            token = _settings.set(settings)
        self._timeout = settings.teardown_timeout
        self._settings = settings
        started = time.perf_counter()
        try:
            with _metrics.setting_up():
                handle = await self.resource.acquire()
        finally:
            if token is not None:
                _settings.reset(token)
        self.setup_ms = (time.perf_counter() - started) * 1000
        _metrics.record_setup(self.kind, self.setup_ms)
        self._handle = handle
        self._entered = True
        return handle

    async def reset(self) -> None:
        if self._entered:
            await self.resource.reset(self._handle)  # type: ignore[arg-type]

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        handle, self._handle = self._handle, None
        if not self._entered:
            return
        self._entered = False
        outcome = self.outcome
        if outcome is None:
            outcome = Outcome.FAILED if isinstance(exc, Exception) else Outcome.PASSED
        started = time.perf_counter()
        token = _settings.set(self._settings)
        if isinstance(self.resource, _GeneratorResource):
            self.resource.exc = exc
        try:
            # Shielded: a cancelled or timed-out test still cleans up; bounded so a hung server
            # cannot hang the suite.
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + self._timeout
                self.kept = await self.resource.release(cast(H, handle), outcome)
        finally:
            _settings.reset(token)
        self.teardown_ms = (time.perf_counter() - started) * 1000
        _metrics.record_teardown(self.kind, self.teardown_ms)
        if scope.cancelled_caught:
            raise TeardownError(
                f"cleanup of {self.kind} did not finish within {self._timeout:g} s; raise "
                f"ISOLATED_ENV_TEARDOWN_TIMEOUT if the server is just slow"
            )


_kept_sink: contextvars.ContextVar[list[Kept] | None] = contextvars.ContextVar("isolated_env_kept", default=None)


def report_kept(kept: Kept) -> None:
    """Called by a generator resource below its ``yield``: it kept its data (for a failed test)."""
    sink = _kept_sink.get()
    if sink is None:
        raise IsolatedEnvError("report_kept() is for a resource generator's cleanup, below its yield")
    sink.append(kept)


class _GeneratorResource(Generic[H]):
    """A resource written as one async generator: setup above its ``yield``, cleanup below. The
    yield expression receives the :class:`Outcome`; a generator that keeps its data for a failed
    test says where with :func:`report_kept`."""

    kind: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    provider: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None
    _reset: ClassVar[Callable[[Any], Awaitable[None]] | None] = None
    _reap: ClassVar[Callable[..., Awaitable[list[str]]] | None] = None
    _statistics: ClassVar[Callable[[Any], PoolStatistics | None] | None] = None
    _nest: ClassVar[Callable[[Any], AbstractAsyncContextManager[Any]] | None] = None
    _handle: Any = None

    exc: BaseException | None = None
    """The exception leaving the block, thrown into the generator as asynccontextmanager would."""

    def __init__(self, gen: AsyncIterator[Any]) -> None:
        self._gen = cast("AsyncGenerator[Any, Outcome | None]", gen)

    async def acquire(self) -> H:
        try:
            handle: H = await self._gen.__anext__()
        except StopAsyncIteration:
            raise IsolatedEnvError(f"the {self.kind} resource's generator did not yield a handle") from None
        self._handle = handle
        return handle

    def statistics(self) -> PoolStatistics | None:
        stats = type(self)._statistics
        return stats(self._handle) if stats is not None and self._handle is not None else None

    def nested(self, handle: H) -> AbstractAsyncContextManager[H]:
        nest = type(self)._nest
        if nest is None:
            raise NestingUnsupported(self.kind)
        return nest(handle)

    async def reset(self, handle: H) -> None:
        reset = type(self)._reset
        if reset is not None:
            await reset(handle)

    async def release(self, handle: H, outcome: Outcome) -> Kept | None:
        gen, exc, self.exc = self._gen, self.exc, None
        sink: list[Kept] = []
        token = _kept_sink.set(sink)
        try:
            if exc is not None:
                await gen.athrow(exc)
            else:
                await gen.asend(outcome)
        except StopAsyncIteration:
            return sink[0] if sink else None
        except BaseException as raised:
            if raised is exc:
                return None  # the block's own exception, re-raised by the generator: it goes on as is
            raise
        finally:
            _kept_sink.reset(token)
        await gen.aclose()
        raise IsolatedEnvError(f"the {self.kind} resource's generator yielded twice; a resource yields once")

    @classmethod
    async def reap(cls, settings: Settings, *, kept: bool = False, **options: Any) -> list[str]:
        return await cls._reap(settings, kept, **options) if cls._reap is not None else []


def resource(
    kind: str,
    *,
    aliases: tuple[str, ...] = (),
    provider: str | None = None,
    extra: str | None = None,
    reset: Callable[[Any], Awaitable[None]] | None = None,
    reap: Callable[..., Awaitable[list[str]]] | None = None,
    probe: Callable[[Settings], Awaitable[None]] | None = None,
    self_check: Callable[[], Awaitable[None]] | None = None,
    statistics: Callable[[Any], PoolStatistics | None] | None = None,
    nest: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[Callable[P, AsyncIterator[H]]], Callable[P, ResourceContext[H]]]:
    """Turn a one-``yield`` async generator into an ``isolated_*`` factory (a Resource class
    made from it is the factory's ``resource_class``, for the registry).

    ``reset(handle)`` returns a handle to pristine state in place; ``reap(settings, kept)`` removes
    what dead owners left; ``probe(settings)`` raises ServiceUnavailable when the resource cannot be
    had (the ``requires_<kind>`` marker); ``self_check()`` is ``isolated-env doctor``'s isolation
    check; ``statistics(handle)`` the pool figures ``Environment.statistics()`` reports;
    ``nest(handle)`` an async context manager giving a narrower scope a handle that starts from
    ``handle``'s state and leaves it untouched on exit (see :meth:`Resource.nested`)."""

    def decorate(fn: Callable[P, AsyncIterator[H]]) -> Callable[P, ResourceContext[H]]:
        attrs: dict[str, Any] = {
            "kind": kind,
            "aliases": aliases,
            "provider": provider,
            "extra": extra,
            "_reset": staticmethod(reset) if reset is not None else None,
            "_reap": staticmethod(reap) if reap is not None else None,
            "_statistics": staticmethod(statistics) if statistics is not None else None,
            "_nest": staticmethod(nest) if nest is not None else None,
            **({"probe": classmethod(lambda cls, settings: probe(settings))} if probe is not None else {}),
            **({"self_check": classmethod(lambda cls: self_check())} if self_check is not None else {}),
            "__doc__": fn.__doc__,
            "__module__": fn.__module__,
            "__qualname__": f"{fn.__qualname__}.resource_class",
        }
        cls: type[_GeneratorResource[H]] = type(f"{fn.__name__}_resource", (_GeneratorResource,), attrs)

        @functools.wraps(fn)
        def factory(*args: P.args, **kwargs: P.kwargs) -> ResourceContext[H]:
            context = ResourceContext(cls(fn(*args, **kwargs)))
            context.remake = functools.partial(factory, *args, **kwargs)
            return context

        factory.resource_class = cls  # type: ignore[attr-defined]
        return factory

    return decorate
