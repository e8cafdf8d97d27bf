"""The resource contract: what every ``isolated_*`` factory is, whoever wrote it.

A :class:`Resource` hands out a handle (``acquire``), returns it to pristine state (``reset``) and
takes it back with the test's :class:`Outcome` (``release``); ``reap`` removes what dead owners
left. :class:`PooledResource` writes acquire/reset/release once over :class:`~isolated_env.Pool`,
so a pooled resource writes only ``create``, ``clean``, ``destroy`` and ``wrap``; :func:`resource`
turns a one-``yield`` async generator into a resource for the ones that pool nothing.

The Environment, the pytest plugin, the unittest adapter and the CLI know resources only through
this contract and :mod:`._registry`, so a package outside isolated_env adds one by registering it
under the ``isolated_env.resources`` entry point.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, ClassVar, Generic, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

import anyio

from . import _metrics
from ._config import Settings, resolve
from ._errors import IsolatedEnvError, TeardownError
from ._pool import Lease, Pool, PoolStatistics

__all__ = [
    "Kept",
    "Outcome",
    "PooledResource",
    "Resource",
    "ResourceContext",
    "current_settings",
    "report_kept",
    "resource",
]

H = TypeVar("H")
T = TypeVar("T")
P = ParamSpec("P")

_settings: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("isolated_env_settings", default=None)


def current_settings() -> Settings:
    """Settings of the enclosing Environment, or freshly resolved ones for a standalone resource."""
    return _settings.get() or resolve()


def with_settings(settings: Settings) -> contextvars.Token[Settings | None]:
    return _settings.set(settings)


def restore_settings(token: contextvars.Token[Settings | None]) -> None:
    _settings.reset(token)


class Outcome(enum.Enum):
    """How the test that held a handle ended, as ``release`` is told."""

    PASSED = "passed"
    """The test passed (or the block exited normally): clean the instance and pool it again."""
    FAILED = "failed"
    """The test failed: keep its data for inspection when keep-on-failure is on, else as PASSED."""
    ESCAPED = "escaped"
    """State left the isolation (an escaped COMMIT, a cancelled or broken lease): never reuse it."""


@dataclasses.dataclass(frozen=True)
class Kept:
    """What keep-on-failure kept, where it is and how to reach it (no secrets)."""

    kind: str
    where: str
    reach: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}" + (f" ({self.reach})" if self.reach else "")


@runtime_checkable
class Resource(Protocol[H]):
    """One isolated thing for one test. Class attributes describe it to the registry:
    ``kind`` (its name in an Environment, fixture ``isolated_<kind>``, marker
    ``requires_<kind>``), ``aliases``, ``provider`` (the server kind it needs, or None) and
    ``extra`` (the pip extra that installs its driver, or None)."""

    kind: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    provider: ClassVar[str | None]
    extra: ClassVar[str | None]

    async def acquire(self) -> H:
        """Hand out a handle in pristine state."""
        ...

    async def reset(self, handle: H) -> None:
        """Return ``handle`` to pristine state without giving it back (one Hypothesis example)."""
        ...

    async def release(self, handle: H, outcome: Outcome) -> Kept | None:
        """Take ``handle`` back; returns what was kept when keep-on-failure kept it."""
        ...

    @classmethod
    async def reap(cls, settings: Settings, *, kept: bool = False) -> list[str]:
        """Remove what dead owners left (and, with ``kept``, what failed tests kept); return names."""
        ...


def keeps(outcome: Outcome, own: bool | None = None) -> bool:
    """Whether ``outcome`` asks a resource to keep its data: a failure, with keep-on-failure on
    (the resource's own ``keep_on_failure`` argument ``own``, else the ``keep_failed`` setting)."""
    if outcome is not Outcome.FAILED:
        return False
    return bool(own) if own is not None else current_settings().keep_failed


class PooledResource(Generic[T, H]):
    """A resource whose instances (connections, leased slots, databases) live in a per-loop
    :class:`~isolated_env.Pool`.

    Subclasses set the class attributes and write ``create`` (a new instance), ``clean`` (back to
    pristine; raising destroys it), ``destroy`` and ``wrap`` (the handle a test sees); optionally
    ``prepare`` (find the server before the pool is chosen), ``pool_key``, ``keep`` and ``reap``.
    Instances with equal ``pool_key()`` share one pool, so ``create``/``clean``/``destroy`` may only
    depend on what the key holds.
    """

    kind: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    provider: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None

    keep_on_failure: bool | None = None

    _lease: Lease[T] | None = None
    _pool: Pool[T] | None = None

    # -- what a resource writes ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Runs before the pool is looked up (find the server the pool key names)."""

    def pool_key(self) -> Hashable:
        return (type(self).__qualname__, current_settings().capacity)

    def pool_name(self) -> str:
        return f"{self.kind} instances"

    def capacity(self) -> int:
        return current_settings().capacity

    async def create(self) -> T:
        raise NotImplementedError

    async def clean(self, item: T) -> None:
        raise NotImplementedError

    async def destroy(self, item: T) -> None:
        raise NotImplementedError

    def wrap(self, item: T) -> H:
        raise NotImplementedError

    def validate(self, item: T) -> bool:
        """A cheap check of an idle instance before it is handed out again."""
        return True

    async def keep(self, item: T) -> Kept | None:
        """Keep ``item`` for a failed test (it leaves the pool, never to be reused); None if this
        resource cannot keep anything."""
        return None

    async def on_close(self) -> None:
        """Runs when the pool's event loop closes (close control connections)."""

    @classmethod
    async def reap(cls, settings: Settings, *, kept: bool = False) -> list[str]:
        return []

    # -- the contract, written once -----------------------------------------------------------

    async def acquire(self) -> H:
        from ._runtime import current_runtime

        await self.prepare()
        runtime = await current_runtime()
        self._pool = pool = runtime.pool(self.pool_key(), self._make_pool, on_close=self.on_close)
        lease = await pool.acquire()
        try:
            handle = self.wrap(lease.value)
        except BaseException:
            lease.discard()
            await pool.release(lease)
            raise
        self._lease = lease
        return handle

    def _make_pool(self) -> Pool[T]:
        settings = current_settings()
        return Pool(
            self.pool_name(),
            create=self.create,
            reset=self.clean,
            destroy=self.destroy,
            validate=self.validate,
            capacity=self.capacity(),
            lease_timeout=settings.lease_timeout,
        )

    async def reset(self, handle: H) -> None:
        if self._lease is None:
            raise IsolatedEnvError(f"{self.kind}: reset() of a handle that is not leased")
        await self.clean(self._lease.value)

    async def release(self, handle: H, outcome: Outcome) -> Kept | None:
        lease, pool = self._lease, self._pool
        self._lease = None
        if lease is None or pool is None:
            return None
        if keeps(outcome, self.keep_on_failure):
            kept = await self.keep(lease.value)
            if kept is not None:
                await pool.detach(lease)
                return kept
        if outcome is Outcome.ESCAPED:
            lease.discard()
        await pool.release(lease)
        return None

    def statistics(self) -> PoolStatistics | None:
        return self._pool.statistics() if self._pool is not None else None


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
        self._timeout = 30.0

    def __repr__(self) -> str:
        return f"<ResourceContext {self.kind}>"

    async def __aenter__(self) -> H:
        settings = _settings.get()
        token = None
        if settings is None:  # standalone: resolve once for the wrapper and the resource alike
            settings = resolve()
            token = _settings.set(settings)
        self._timeout = settings.teardown_timeout
        self._settings = settings
        started = time.perf_counter()
        try:
            handle = await self.resource.acquire()
        finally:
            if token is not None:
                _settings.reset(token)
        self.setup_ms = (time.perf_counter() - started) * 1000
        _metrics.record_setup(self.kind, self.setup_ms)
        self._handle = handle
        return handle

    async def reset(self) -> None:
        if self._handle is not None:
            await self.resource.reset(self._handle)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
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
                self.kept = await self.resource.release(handle, outcome)
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

    exc: BaseException | None = None
    """The exception leaving the block, thrown into the generator as asynccontextmanager would."""

    def __init__(self, gen: AsyncIterator[Any]) -> None:
        self._gen = cast("AsyncGenerator[Any, Outcome | None]", gen)

    async def acquire(self) -> H:
        try:
            handle: H = await self._gen.__anext__()
        except StopAsyncIteration:
            raise IsolatedEnvError(f"the {self.kind} resource's generator did not yield a handle") from None
        return handle

    async def reset(self, handle: H) -> None:
        reset = type(self)._reset
        if reset is not None:
            await reset(handle)
            return
        legacy = getattr(handle, "_ie_reset", None)
        if legacy is not None:
            await legacy()

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
) -> Callable[[Callable[P, AsyncIterator[H]]], Callable[P, ResourceContext[H]]]:
    """Turn a one-``yield`` async generator into an ``isolated_*`` factory (a Resource class
    made from it is the factory's ``resource_class``, for the registry).

    ``reset(handle)`` returns a handle to pristine state in place; ``reap(settings, kept)`` removes
    what dead owners left; ``probe(settings)`` raises ServiceUnavailable when the resource cannot be
    had (the ``requires_<kind>`` marker); ``self_check()`` is ``isolated-env doctor``'s isolation
    check."""

    def decorate(fn: Callable[P, AsyncIterator[H]]) -> Callable[P, ResourceContext[H]]:
        attrs: dict[str, Any] = {
            "kind": kind,
            "aliases": aliases,
            "provider": provider,
            "extra": extra,
            "_reset": staticmethod(reset) if reset is not None else None,
            "_reap": staticmethod(reap) if reap is not None else None,
            **({"probe": classmethod(lambda cls, settings: probe(settings))} if probe is not None else {}),
            **({"self_check": classmethod(lambda cls: self_check())} if self_check is not None else {}),
            "__doc__": fn.__doc__,
            "__module__": fn.__module__,
            "__qualname__": f"{fn.__qualname__}.resource_class",
        }
        cls: type[_GeneratorResource[H]] = type(f"{fn.__name__}_resource", (_GeneratorResource,), attrs)

        @functools.wraps(fn)
        def factory(*args: P.args, **kwargs: P.kwargs) -> ResourceContext[H]:
            return ResourceContext(cls(fn(*args, **kwargs)))

        factory.resource_class = cls  # type: ignore[attr-defined]
        return factory

    return decorate
