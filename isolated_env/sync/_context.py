"""Sync context managers and the sync Environment: async resources entered and left in one task of
the background loop, their handles wrapped for synchronous code."""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal

from .._config import UNSET, _Unset
from .._contract import Kept, Outcome
from .._errors import ConfigError, IsolatedEnvError
from ._portal import portal

if TYPE_CHECKING:
    from .._environment import Environment as AsyncEnvironment

__all__ = ["Environment", "SyncContext"]

T = TypeVar("T")
S = TypeVar("S")


class SyncContext(AbstractContextManager[S], Generic[S]):
    """A sync context manager around one async ``isolated_*()`` resource run on the background loop.

    ``outcome`` may be set before exit (``Outcome.FAILED`` keeps a failed test's data when
    keep-on-failure is on); by default an exception leaving the block counts as a failure.
    """

    def __init__(self, kind: str, make: Callable[[], AbstractAsyncContextManager[Any]], wrap: Callable[[Any], S]):
        self.kind = kind
        self.make = make
        self.wrap = wrap
        self.outcome: Outcome | None = None
        self._async: AbstractAsyncContextManager[Any] | None = None
        self._blocking: AbstractContextManager[Any] | None = None
        self._handle: S | None = None

    def __repr__(self) -> str:
        return f"<sync.SyncContext {self.kind}>"

    @property
    def kept(self) -> Kept | None:
        """Where a failed test's data was kept (after exit), if it was."""
        return getattr(self._async, "kept", None)

    def __enter__(self) -> S:
        if self._blocking is not None:
            raise IsolatedEnvError(f"this sync {self.kind} context is already open; make a new one")
        self._async = self.make()
        # One task of the background loop enters and leaves the resource (cancel scopes need that).
        blocking = portal().wrap_async_context_manager(self._async)
        handle = blocking.__enter__()
        try:
            self._handle = self.wrap(handle)
        except BaseException as exc:
            blocking.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._blocking = blocking
        return self._handle

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        blocking, handle, self._blocking, self._handle = self._blocking, self._handle, None, None
        if blocking is None:
            return
        if self.outcome is not None:
            self._async.outcome = self.outcome  # type: ignore[union-attr]
        try:
            if handle is not None:
                handle._close()  # type: ignore[attr-defined]
        finally:
            blocking.__exit__(exc_type, exc, tb)


class Environment:
    """The sync twin of :class:`isolated_env.Environment`: ``env.enter(sync.isolated_redis())``
    returns the sync handle and files it under its kind (``env["redis"]``); everything entered is
    torn down on exit, in reverse. The async Environment lives in one task of the background loop.
    """

    def __init__(
        self,
        *,
        profile: str | _Unset = UNSET,
        capacity: int | _Unset = UNSET,
        lease_timeout: float | _Unset = UNSET,
        teardown_timeout: float | _Unset = UNSET,
    ) -> None:
        self._args: dict[str, Any] = {"profile": profile, "capacity": capacity, "lease_timeout": lease_timeout,
                      "teardown_timeout": teardown_timeout}
        self.outcome: Outcome | None = None
        self.kept: list[Kept] = []
        self._portal: BlockingPortal | None = None
        self._jobs: Any = None
        self._host: concurrent.futures.Future[None] | None = None
        self._env: AsyncEnvironment | None = None
        self._handles: dict[int, Any] = {}  # id(async handle) -> sync handle

    def __enter__(self) -> Environment:
        if self._host is not None:
            raise IsolatedEnvError("this sync Environment is already open; create a new one per test")
        self._portal = portal()
        self._host, (self._env, self._jobs) = self._portal.start_task(self._run)
        return self

    async def _run(self, *, task_status: anyio.abc.TaskStatus[Any]) -> None:
        from .._environment import Environment as AsyncEnvironment

        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        env = AsyncEnvironment(**self._args)
        try:
            async with env:
                task_status.started((env, send))
                async with receive:
                    async for fn, reply in receive:
                        try:
                            reply.set_result(await fn(env))
                        except BaseException as exc:
                            reply.set_exception(exc)  # the caller's thread raises it
                            if not isinstance(exc, Exception):
                                raise
                env.outcome = self.outcome
        finally:
            self.kept.extend(env.kept)

    def _do(self, fn: Callable[[AsyncEnvironment], Awaitable[T]]) -> T:
        if self._portal is None or self._jobs is None:
            raise IsolatedEnvError("this sync Environment is not open: use `with sync.Environment() as env`")
        reply: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._portal.call(self._jobs.send, (fn, reply))
        return reply.result()

    def enter(self, cm: SyncContext[S], name: str | None = None) -> S:
        """Enter a sync ``isolated_*()`` resource and return its sync handle."""
        if not isinstance(cm, SyncContext):
            raise ConfigError(
                f"sync.Environment.enter() takes a sync.isolated_*() resource, not {cm!r}; "
                "async resources go into isolated_env.Environment"
            )
        resource = cm.make()
        inner = self._do(lambda env: env.enter(resource, name=name))
        handle = cm.wrap(inner)
        self._handles[id(inner)] = handle
        return handle

    def reset(self) -> None:
        """Return every entered resource to pristine state without tearing it down."""
        self._do(lambda env: env.reset())

    def __getitem__(self, name: str) -> Any:
        """The sync handle entered under ``name`` (its kind, an alias such as ``database``, or ``name=``)."""
        if self._env is None:
            raise KeyError(f"{name!r}: this sync Environment is not open")
        return self._handles[id(self._env[name])]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._env is not None and name in self._env

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        host, jobs, bridge = self._host, self._jobs, self._portal
        self._host = self._jobs = self._portal = None
        if host is None or jobs is None or bridge is None:
            return
        if self.outcome is None and isinstance(exc, Exception):
            self.outcome = Outcome.FAILED
        try:
            for handle in reversed(list(self._handles.values())):
                handle._close()
        finally:
            self._handles.clear()
            bridge.call(jobs.aclose)
            host.result()  # teardown failures surface here, as from the async Environment
