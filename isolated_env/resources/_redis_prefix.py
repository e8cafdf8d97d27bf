"""isolated_redis(mode=...): a database per test, or a key prefix per test on a server with one.

The prefixes themselves (leases, ACL users, cleanup) are :mod:`._redis_prefixes`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .._config import Settings
from .._contract import Kept, current_settings
from .._errors import ConfigError, IsolationBroken
from .._resource import ResourceContext
from .._runtime import Runtime
from .._servers import redis as servers
from .._servers.redis import RedisServer
from . import redis as db_mode
from ._redis_handle import RedisPrefixHandle
from ._redis_pooled import RedisPooled
from ._redis_prefixes import PREFIXES, _Prefix, prefixes_for
from ._redis_prefixes import _keeper as _prefix_keeper

__all__ = ["MODES", "RedisPrefixResource", "by_mode", "choose_mode", "self_check"]

MODES = ("db", "prefix")


def choose_mode(server: RedisServer, mode: str | None) -> str:
    """``"db"`` or ``"prefix"``: what ``mode`` asks for, or what ``server`` offers when it is None."""
    single = server.cluster or server.databases < 2
    if mode is None:
        return "prefix" if single else "db"
    if mode == "db" and single:
        what = "is a Redis Cluster" if server.cluster else "has a single database"
        raise ConfigError(
            f"isolated_redis(mode='db'): the server at {server.redacted} {what}, so tests cannot have a "
            "database each; use mode='prefix' (or leave mode out to choose from the server)"
        )
    return mode


class RedisPrefixResource(RedisPooled[_Prefix, RedisPrefixHandle]):
    """A private, empty key prefix of a Redis server for one test, its keys deleted when it ends."""

    handle = RedisPrefixHandle
    what, many, pool_tag = "key prefix", "prefixes", "redis-prefix"
    keeper = _prefix_keeper

    def slots_for(self, server: RedisServer, runtime: Runtime) -> Any:
        return prefixes_for(server, runtime)

    def describe(self, item: _Prefix) -> str:
        return item.prefix

    def capacity(self) -> int:
        return max(1, min(current_settings().capacity, PREFIXES))


class _ByMode:
    """``isolated_redis()``: a database per test, or a key prefix per test where the server has
    one database (or ``mode=`` says so); decided when the server is known, at the first lease."""

    kind: ClassVar[str] = "redis"
    aliases: ClassVar[tuple[str, ...]] = db_mode.RedisResource.aliases
    provider: ClassVar[str | None] = "redis"
    extra: ClassVar[str | None] = "redis"

    def __init__(self, keep_on_failure: bool | None, mode: str | None) -> None:
        self.keep_on_failure, self.mode = keep_on_failure, mode
        self.inner: Any = None

    async def acquire(self) -> Any:
        server = await servers.ensure_server(current_settings())
        if choose_mode(server, self.mode) == "prefix":
            self.inner = RedisPrefixResource(keep_on_failure=self.keep_on_failure)
        else:
            self.inner = db_mode.RedisResource(keep_on_failure=self.keep_on_failure)
        return await self.inner.acquire()

    async def reset(self, handle: Any) -> None:
        await self.inner.reset(handle)

    async def release(self, handle: Any, outcome: Any) -> Kept | None:
        kept: Kept | None = await self.inner.release(handle, outcome)
        return kept

    def statistics(self) -> Any:
        return self.inner.statistics() if self.inner is not None else None

    @classmethod
    async def reap(cls, settings: Settings, *, kept: bool = False, **options: Any) -> list[str]:
        return await db_mode.RedisResource.reap(settings, kept=kept, **options)


def by_mode(keep_on_failure: bool | None, mode: str | None) -> ResourceContext[Any]:
    """What ``isolated_redis(mode=...)`` returns; a mode that is neither is a ConfigError at once."""
    if mode is not None and mode not in MODES:
        raise ConfigError(
            f"isolated_redis(mode={mode!r}): mode is 'db' (a logical database per test), 'prefix' (a key "
            "prefix per test, for a cluster or a server with one database) or None (chosen from the server)"
        )
    return ResourceContext(_ByMode(keep_on_failure, mode))


async def self_check() -> None:
    """``isolated-env doctor``: two tests never share a namespace, and keys never outlive one."""
    async with db_mode.isolated_redis() as a, db_mode.isolated_redis() as b:
        await a.set(a.key("ie:doctor"), 1)
        if await b.exists(b.key("ie:doctor")) or (a.db, a.prefix) == (b.db, b.prefix):
            raise IsolationBroken("isolation self-check failed: two tests shared a namespace")
    async with db_mode.isolated_redis() as c:
        left = [k async for k in c.scan_iter(match=c.key("*"))]
        if left:
            raise IsolationBroken("isolation self-check failed: keys survived their test")
