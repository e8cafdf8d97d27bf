"""The resource contract: what every ``isolated_*`` factory is, whoever wrote it.

A :class:`Resource` hands out a handle (``acquire``), returns it to pristine state (``reset``) and
takes it back with the test's :class:`Outcome` (``release``); ``reap`` removes what dead owners
left. :class:`PooledResource` writes acquire/reset/release once over :class:`~isolated_env.Pool`,
so a pooled resource writes only ``create``, ``clean``, ``destroy`` and ``wrap``; :func:`resource`
turns a one-``yield`` async generator into a resource for the ones that pool nothing.

:mod:`._resource` holds what a factory returns (:class:`ResourceContext`) and the decorator.
The Environment, the pytest plugin, the unittest adapter and the CLI know resources only through
this contract and :mod:`._registry`, so a package outside isolated_env adds one by registering it
under the ``isolated_env.resources`` entry point.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
from collections.abc import Hashable
from typing import TYPE_CHECKING, ClassVar, Generic, ParamSpec, Protocol, TypeVar, runtime_checkable

from ._config import Settings, resolve
from ._errors import IsolatedEnvError
from ._pool import Lease, Pool, PoolStatistics

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Kept", "Outcome", "PooledResource", "Resource", "current_settings", "keeps"]

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

    # Optional, for scopes (docs/scopes.md): ``nested(handle)`` returns an async context manager
    # whose handle starts from ``handle``'s state (a class's data) and whose exit undoes everything
    # done through it, leaving ``handle`` as it was: a savepoint, a clone of the database, a copy of
    # the keys or of the directory. A resource without it raises NestingUnsupported when a wider
    # scope is asked to share it (:mod:`._nesting`).


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
    reuse_oldest: ClassVar[bool] = False  # hand out the idle instance released first (see Pool)

    keep_on_failure: bool | None = None

    _lease: Lease[T] | None = None
    _pool: Pool[T] | None = None
    runtime: Runtime

    # -- what a resource writes ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Runs before the pool is looked up (find the server the pool key names); ``self.runtime``
        is the event loop's Runtime by then."""

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

    async def died(self) -> BaseException | None:
        """The error to raise when this resource's server died (asked only after the test failed
        or a reset failed, never on the passing path); None when it runs."""
        return None

    @classmethod
    async def reap(cls, settings: Settings, *, kept: bool = False) -> list[str]:
        return []

    # -- the contract, written once -----------------------------------------------------------

    async def acquire(self) -> H:
        from ._runtime import current_runtime

        self.runtime = runtime = await current_runtime()
        await self.prepare()
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
            reuse_oldest=self.reuse_oldest,
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
        if outcome is not Outcome.PASSED:
            died = await self.died()
            if died is not None:  # nothing to keep or clean on a dead server: one clear error instead
                lease.discard()
                await pool.release(lease)
                raise died
        if keeps(outcome, self.keep_on_failure):
            kept = await self.keep(lease.value)
            if kept is not None:
                await pool.detach(lease)
                return kept
        if outcome is Outcome.ESCAPED:
            lease.discard()
        failure = await pool.release(lease)
        if failure is not None:
            died = await self.died()
            if died is not None:
                raise died from failure
        return None

    def statistics(self) -> PoolStatistics | None:
        return self._pool.statistics() if self._pool is not None else None
