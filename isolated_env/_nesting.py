"""Scopes: a narrower scope (one test) that starts from a wider scope's state (its class's data) and
leaves that state untouched.

A resource nests through its optional ``nested(handle)`` (see :class:`~isolated_env.Resource`):
PostgreSQL by a savepoint (transaction mode) or a clone of the wider scope's database (database
mode), Redis by copying the keys into a database of the test's own, a directory by copying it.
:func:`nested_environment` does that for every resource of an open :class:`Environment`; a
resource that cannot nest fails first, with one :class:`NestingUnsupported`, before anything is
entered.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from ._contract import Kept, Outcome, Resource
from ._errors import ConfigError, NestingUnsupported
from ._resource import ResourceContext, _GeneratorResource

if TYPE_CHECKING:
    from ._environment import Environment

__all__ = ["HeldEnvironment", "fresh", "nested_context", "nested_environment", "nester"]

H = TypeVar("H")


def nester(resource: Any) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """The ``nested`` method of ``resource`` (or of the resource it delegates to, ``.inner``, as
    ``isolated_redis()`` does once it has chosen its mode); NestingUnsupported when it has none."""
    for candidate in (resource, getattr(resource, "inner", None)):
        nest = getattr(candidate, "nested", None)
        if nest is not None:
            return nest  # type: ignore[no-any-return]
    raise NestingUnsupported(getattr(resource, "kind", type(resource).__name__))


class _Nested(Generic[H]):
    """A resource for a narrower scope: entering it enters the wider resource's ``nested(handle)``."""

    aliases: ClassVar[tuple[str, ...]] = ()
    provider: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None

    def __init__(self, kind: str, nest: Callable[[Any], AbstractAsyncContextManager[H]], outer: H) -> None:
        self.kind = kind
        self._nest, self._outer = nest, outer
        self._cm: AbstractAsyncContextManager[H] | None = None

    async def acquire(self) -> H:
        cm = self._nest(self._outer)
        handle = await cm.__aenter__()
        self._cm = cm
        return handle

    async def reset(self, handle: H) -> None:
        raise ConfigError(
            f"{self.kind} of a nested scope cannot be reset in place; give the test an environment_fixture of "
            "scope='function' for Hypothesis examples"
        )

    async def release(self, handle: H, outcome: Outcome) -> Kept | None:
        cm, self._cm = self._cm, None
        if cm is not None:
            failure = RuntimeError(f"the test failed ({outcome.value})") if outcome is not Outcome.PASSED else None
            # A failure is passed on as one, so a nested resource that keeps data for failed tests can.
            await cm.__aexit__(type(failure) if failure else None, failure, None)
        return None

    @classmethod
    async def reap(cls, settings: Any, *, kept: bool = False) -> list[str]:
        return []


def nested_context(cm: ResourceContext[H], handle: H) -> ResourceContext[H]:
    """A context for a narrower scope of ``cm`` (entered, holding ``handle``)."""
    return ResourceContext(cast("Resource[H]", _Nested(cm.kind, nester(cm.resource), handle)))


@asynccontextmanager
async def nested_environment(outer: Environment) -> AsyncIterator[Environment]:
    """An Environment holding, under the same names, a nested scope of every resource of
    ``outer``: each starts from its state in ``outer``, and leaving it leaves ``outer`` as it was."""
    from ._environment import Environment

    contexts = outer._resources
    if outer._stack is None:
        raise ConfigError("nest() needs an open Environment (inside `async with env:`)")
    plan: list[tuple[str, ResourceContext[Any]]] = []
    for key, cm in contexts.items():  # every resource is checked before any is entered
        if not isinstance(cm, ResourceContext):
            raise NestingUnsupported(key, f"{cm!r} is a plain context manager, not an isolated_* resource")
        plan.append((key, nested_context(cm, outer._handles[key])))
    inner = Environment(**outer._args, leak_check=False)
    async with inner:
        for key, context in plan:
            await inner.enter(context, name=key)
        yield inner


def fresh(cm: Any) -> AbstractAsyncContextManager[Any]:
    """Another context like ``cm`` (never entered), for a fixture that opens it once per scope:
    ``cm`` is an ``isolated_*()`` context (``isolated_postgres(template=...)``), a factory called
    with no arguments (``isolated_redis``) or a registered kind (``"redis"``)."""
    if isinstance(cm, str):
        from ._registry import spec

        return cast(AbstractAsyncContextManager[Any], spec(cm).factory()())
    if isinstance(cm, ResourceContext):
        if cm.remake is not None:
            return cm.remake()
        if isinstance(cm.resource, _GeneratorResource):
            raise ConfigError(f"{cm!r} cannot be opened more than once; pass its factory (a callable) instead")
        return ResourceContext(copy.copy(cm.resource))
    if callable(cm):
        made = cm()
        if not isinstance(made, AbstractAsyncContextManager):
            raise ConfigError(f"{cm!r}() returned {made!r}, not an async context manager")
        return made
    raise ConfigError(
        f"{cm!r} is neither an isolated_*() resource nor a factory; pass e.g. ie.isolated_redis() or ie.isolated_redis"
    )


class HeldEnvironment:
    """A wider scope's Environment (a class's), held open in a task of its own in ``loop`` from
    :meth:`open` (run in ``loop``) to :meth:`close` (called with the loop idle, e.g. from a class's
    teardown), so that it is entered and left in one task."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self.loop, self.where = loop, where
        self.env: Environment | None = None
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, fill: Callable[[Environment], Awaitable[Any]]) -> Environment:
        """Open the Environment and ``await fill(env)`` (enter its resources, load the data)."""
        ready: asyncio.Future[Environment] = self.loop.create_future()
        self._task = self.loop.create_task(self._hold(ready, fill), name=f"isolated-env scope {self.where}")
        self.env = await ready
        return self.env

    async def _hold(self, ready: asyncio.Future[Environment], fill: Callable[[Environment], Awaitable[Any]]) -> None:
        from ._environment import Environment

        try:
            async with Environment(leak_check=False) as env:
                await fill(env)
                ready.set_result(env)
                await self._done.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            raise

    def close(self) -> None:
        """Leave the scope's Environment (from the scope node's finalizer, the loop idle)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._done.set()
        if self.loop.is_closed():
            raise ConfigError(f"the event loop of {self.where}'s environment closed before the scope ended")
        if not task.done():
            self.loop.run_until_complete(task)
        task.result()
