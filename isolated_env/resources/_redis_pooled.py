"""What the two Redis resources share: a leased logical database (:mod:`.redis`) and a leased key
prefix (:mod:`._redis_prefix`) are pooled, worded, wrapped and released the same way; each says
how it leases (``slots_for``), how many it may hold (``capacity``) and how it names an item
(``describe``)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, TypeVar

from .._contract import Kept, PooledResource, current_settings
from .._drivers import redis as redis_driver
from .._errors import IsolationBroken, TeardownError
from .._runtime import Runtime
from .._servers import redis as servers
from .._servers.redis import RedisServer
from ._died import died as _died

__all__ = ["RedisPooled"]

T = TypeVar("T")
H = TypeVar("H")


class RedisPooled(PooledResource[T, H]):
    """A private Redis namespace for one test, leased from the server and emptied when it ends."""

    kind: ClassVar[str] = "redis"
    provider: ClassVar[str | None] = "redis"
    extra: ClassVar[str | None] = "redis"
    handle: ClassVar[type[Any]]  # the handle class: handle(item)
    what: ClassVar[str]  # what is leased, in messages: "database", "key prefix"
    many: ClassVar[str]  # and in the pool's name: "databases", "prefixes"
    pool_tag: ClassVar[str]
    keeper: ClassVar[Any]  # the _LeaseKeeper of its leases

    def __init__(self, *, keep_on_failure: bool | None = None) -> None:
        self.keep_on_failure = keep_on_failure

    def slots_for(self, server: RedisServer, runtime: Runtime) -> Any:
        """What leases, empties and releases the items of ``server`` in this event loop."""
        raise NotImplementedError

    def describe(self, item: T) -> str:
        """An item as messages name it: ``database 3``, ``{ie:3}:``."""
        raise NotImplementedError

    async def prepare(self) -> None:
        self.server = await servers.ensure_server(current_settings())
        self.slots = self.slots_for(self.server, self.runtime)

    def pool_key(self) -> Hashable:
        return (self.pool_tag, self.server.key, current_settings().capacity)

    def pool_name(self) -> str:
        return f"redis {self.many} ({self.server.redacted})"

    async def create(self) -> T:
        with redis_driver.translate(f"leasing a {self.what} of {self.server.redacted}"):
            item: T = await self.slots.create()
            return item

    async def clean(self, item: T) -> None:
        with redis_driver.translate(f"emptying {self.describe(item)}", failure=TeardownError):
            await self.slots.clean(item)

    async def destroy(self, item: T) -> None:
        with redis_driver.translate(f"releasing {self.describe(item)}", failure=TeardownError):
            await self.slots.destroy(item)

    def validate(self, item: T) -> bool:
        # An idle item whose lease was lost meanwhile is never handed out again (it is released
        # unwiped: someone else may hold it now).
        return bool(type(self).keeper.reused(item))

    def wrap(self, item: T) -> H:
        item.clean = False  # type: ignore[attr-defined]
        handle: H = type(self).handle(item)
        return handle

    async def died(self) -> BaseException | None:
        return await _died("redis", self.server, self.server.url(0))

    async def keep(self, item: T) -> Kept:
        with redis_driver.translate(f"keeping {self.describe(item)}", failure=TeardownError):
            kept: Kept = await self.slots.keep(item)
            return kept

    async def release(self, handle: H, outcome: Any) -> Kept | None:
        """Give the item back; a lease lost while the test held it fails the test (after the
        release, so nothing is left behind)."""
        lease = self._lease
        lost = getattr(lease.value, "lost", None) if lease is not None else None
        kept = await super().release(handle, outcome)
        if lost is not None:
            raise IsolationBroken(lost)
        return kept
