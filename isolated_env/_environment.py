"""Environment: one AsyncExitStack holding a test's isolated resources, reachable by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar

import anyio

from . import _metrics
from ._config import UNSET, Settings, _Unset, resolve
from ._contract import Kept, Outcome, Resource, restore_settings, with_settings
from ._errors import ConfigError, IsolatedEnvError, ServerDied, TeardownError
from ._pool import PoolStatistics
from ._resource import ResourceContext

__all__ = ["Environment", "EnvironmentStatistics"]

H = TypeVar("H")

def _canonical(name: str) -> str:
    from ._registry import aliases, builtin_kind

    # A built-in name needs no look at the entry points (no other resource may take it).
    return builtin_kind(name) or aliases().get(name, name)


@dataclasses.dataclass(frozen=True)
class EnvironmentStatistics:
    """Setup/teardown times per resource (ms), the pools they leased from, and what leaked."""

    setup_ms: Mapping[str, float]
    teardown_ms: Mapping[str, float]
    pools: Mapping[str, PoolStatistics]
    total_setup_ms: float
    leaks: _metrics.LeakReport | None
    """Process-wide difference from entry to exit (None while the environment is open)."""


class Environment:
    """Composes ``isolated_*`` resources; everything entered is torn down on exit, in reverse.

    ``await env.enter(isolated_postgres())`` returns the handle and files it under its kind
    (``env["postgres"]``, alias ``env["database"]``); ``name=`` files a second one of a kind.
    ``env.outcome = Outcome.FAILED`` before exit (or an exception leaving the block) releases every
    resource as failed, so keep-on-failure keeps their data; ``env.kept`` then says where.
    ``leak_check=False`` skips the process snapshots taken on entry and exit (``statistics().leaks``
    stays None): the pytest plugin's per-test environments do, as its session-wide check covers them.
    """

    def __init__(
        self,
        *,
        profile: str | _Unset = UNSET,
        capacity: int | _Unset = UNSET,
        lease_timeout: float | _Unset = UNSET,
        teardown_timeout: float | _Unset = UNSET,
        leak_check: bool = True,
    ) -> None:
        self._leak_check = leak_check
        self._args: dict[str, Any] = {
            "profile": profile,
            "capacity": capacity,
            "lease_timeout": lease_timeout,
            "teardown_timeout": teardown_timeout,
        }
        self.settings: Settings | None = None
        self._stack: AsyncExitStack | None = None
        self._handles: dict[str, Any] = {}
        self._resources: dict[str, Any] = {}
        self._teardown_errors: list[BaseException] = []
        self._before: _metrics.ProcessSnapshot | None = None
        self._leaks: _metrics.LeakReport | None = None
        self._final_pools: dict[str, PoolStatistics] = {}
        self.outcome: Outcome | None = None
        self.kept: list[Kept] = []

    async def __aenter__(self) -> Environment:
        if self._stack is not None:
            raise IsolatedEnvError("this Environment is already open; create a new one per test")
        self.settings = resolve(**self._args)
        self._before = _metrics.snapshot() if self._leak_check else None
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self._final_pools = self._pool_statistics()
        if self.outcome is not None:
            for cm in self._resources.values():
                if isinstance(cm, ResourceContext) and cm.outcome is None:
                    cm.outcome = self.outcome
        with anyio.CancelScope(shield=True):
            await stack.__aexit__(exc_type, exc, tb)
        self.kept.extend(cm.kept for cm in self._resources.values() if isinstance(cm, ResourceContext) and cm.kept)
        self._handles.clear()
        if self._before is not None:
            self._leaks = _metrics.LeakReport.between(self._before, _metrics.snapshot())
        errors, self._teardown_errors = self._teardown_errors, []
        if len(errors) == 1 and (exc is None or isinstance(errors[0], ServerDied)):
            raise errors[0]  # a server that died is the one clear error (the driver's is its context)
        if errors:
            raise ExceptionGroup(f"{len(errors)} resource(s) failed to clean up", errors)  # type: ignore[type-var]

    async def enter(self, cm: AbstractAsyncContextManager[H] | Resource[H], name: str | None = None) -> H:
        """Enter ``cm`` (an ``isolated_*()`` resource, a :class:`Resource`, or any async context
        manager) and return its handle."""
        if self._stack is None or self.settings is None:
            raise IsolatedEnvError("enter() needs an open Environment: use `async with Environment() as env`")
        if not isinstance(cm, AbstractAsyncContextManager) and isinstance(cm, Resource):
            cm = ResourceContext(cm)
        key = name or getattr(cm, "kind", None)
        if not key:
            raise ConfigError(f"{cm!r} has no kind; pass a name: await env.enter(cm, name='...')")
        key = _canonical(key)
        if key in self._handles:
            raise ConfigError(
                f"this environment already has a {key!r}; pass name='{key}2' (or another name) for a second one"
            )
        token = with_settings(self.settings)
        try:
            handle = await cm.__aenter__()
        finally:
            restore_settings(token)
        self._stack.push_async_exit(self._exit_of(key, cm))
        self._handles[key] = handle
        self._resources[key] = cm
        return handle

    def _exit_of(self, key: str, cm: AbstractAsyncContextManager[Any]) -> Any:
        async def exit_(
            exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> bool:
            try:
                return bool(await cm.__aexit__(exc_type, exc, tb))
            except BaseException as err:
                if err is exc:
                    raise
                if not isinstance(err, Exception):
                    raise
                # Every resource still gets its teardown; the failures surface together at the end.
                if not isinstance(err, (IsolatedEnvError, ExceptionGroup)):
                    wrapped = TeardownError(f"cleanup of {key!r} failed: {err!r}")
                    wrapped.__cause__ = err
                    err = wrapped
                self._teardown_errors.append(err)
                return False

        return exit_

    def __getitem__(self, name: str) -> Any:
        key = _canonical(name)
        try:
            return self._handles[key]
        except KeyError:
            have = ", ".join(sorted(self._handles)) or "nothing yet"
            raise KeyError(f"{name!r} is not in this environment (it has: {have})") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _canonical(name) in self._handles

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default

    def keys(self) -> list[str]:
        return list(self._handles)

    def nest(self) -> AbstractAsyncContextManager[Environment]:
        """A narrower scope of this open environment: ``async with env.nest() as inner:`` gives an
        Environment with the same names, each resource starting from its state here (a class's
        data) and undone on exit, so this one is left as it was. A resource that cannot nest raises
        :class:`~isolated_env.NestingUnsupported` before anything is entered (docs/scopes.md)."""
        from ._nesting import nested_environment

        return nested_environment(self)

    async def reset(self) -> None:
        """Return every entered resource to pristine state without tearing it down.

        One call between Hypothesis examples makes each example start clean for the cost of a
        rollback and a flush.
        """
        for cm in reversed(list(self._resources.values())):
            if isinstance(cm, ResourceContext):
                await cm.reset()

    def _pool_statistics(self) -> dict[str, PoolStatistics]:
        out: dict[str, PoolStatistics] = {}
        for key, cm in self._resources.items():
            stats = getattr(getattr(cm, "resource", None), "statistics", None)
            value = stats() if callable(stats) else None
            if isinstance(value, PoolStatistics):
                out[key] = value
        return out

    def statistics(self) -> EnvironmentStatistics:
        setup = {k: r.setup_ms for k, r in self._resources.items() if getattr(r, "setup_ms", None) is not None}
        teardown = {
            k: r.teardown_ms for k, r in self._resources.items() if getattr(r, "teardown_ms", None) is not None
        }
        return EnvironmentStatistics(
            setup_ms=setup,
            teardown_ms=teardown,
            pools=self._pool_statistics() if self._stack is not None else self._final_pools,
            total_setup_ms=sum(setup.values()),
            leaks=self._leaks,
        )

