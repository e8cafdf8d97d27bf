"""isolated_redis(): a leased logical database of its own for each test, flushed on release.

Slots are leased through the server itself (``SET NX PX`` on a lease key in database 0, kept alive
by a heartbeat), so two processes — pytest-xdist workers, or two runs sharing one server — never
hold the same database. When every database is leased, a lease waits; it never collides.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio

from .._config import run_id
from .._errors import MissingDependencyError, ServiceUnavailable
from .._pool import Pool, TryLater
from .._resource import current_settings, resource
from .._runtime import current_scope
from .._servers import redis as servers
from .._servers.redis import RedisServer
from .._servers.registry import owner_alive, owner_tag

__all__ = ["RedisHandle", "isolated_redis"]

LEASE_TTL_MS = 30_000
HEARTBEAT_S = 10.0

_ACQUIRE = """
for i = tonumber(ARGV[3]), tonumber(ARGV[4]) do
  if redis.call('SET', 'ie:slot:' .. i, ARGV[1], 'NX', 'PX', ARGV[2]) then return i end
end
return -1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]); n = n + 1 end
end
return n
"""


def _aredis() -> Any:
    try:
        import redis.asyncio as aredis
    except ImportError:  # pragma: no cover - redis is a core dependency
        raise MissingDependencyError("redis", "redis", "isolated_redis()") from None
    return aredis


_owners: dict[int, str] = {}


def _owner() -> str:
    """This process's label on its leases; per pid, so a forked child does not wear its parent's."""
    pid = os.getpid()
    owner = _owners.get(pid)
    if owner is None:
        owner = _owners[pid] = json.dumps({**owner_tag(), "run": run_id()}, separators=(",", ":"))
    return owner


class _Heartbeat:
    """Keeps this process's slot leases alive from a thread, whatever event loops come and go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[RedisServer, set[int]]] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, server: RedisServer, slot: int) -> None:
        with self._lock:
            self._held.setdefault(server.url(0), (server, set()))[1].add(slot)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isolated-env-redis-leases", daemon=True)
                self._thread.start()

    def remove(self, server: RedisServer, slot: int) -> None:
        with self._lock:
            entry = self._held.get(server.url(0))
            if entry is not None:
                entry[1].discard(slot)
                if not entry[1]:
                    del self._held[server.url(0)]
            if not self._held:
                self._wake.set()

    def _run(self) -> None:
        import redis

        while True:
            self._wake.wait(HEARTBEAT_S)
            with self._lock:
                # Decided under the lock: an add() racing with our exit either sees no thread
                # (and starts one) or puts a slot in _held that keeps this thread running.
                if not self._held:
                    self._thread = None
                    self._wake.clear()
                    return
                self._wake.clear()
                held = [(s, sorted(slots)) for s, slots in self._held.values()]
            for server, slots in held:
                with contextlib.suppress(Exception):
                    client = redis.Redis(**server.client_kwargs(0), socket_timeout=5)
                    try:
                        keys = [f"ie:slot:{i}" for i in slots]
                        client.eval(_REFRESH, len(keys), *keys, _owner(), LEASE_TTL_MS)
                    finally:
                        client.close()


_heartbeat = _Heartbeat()


class _Slot:
    __slots__ = ("client", "db", "server")

    def __init__(self, server: RedisServer, db: int, client: Any) -> None:
        self.server = server
        self.db = db
        self.client = client


class RedisHandle:
    """Every ``redis.asyncio.Redis`` command on the test's own logical database.

    ``.client`` is the Redis client, ``.db`` its database number, ``.url`` reaches the same database
    from another client or process.
    """

    def __init__(self, slot: _Slot, pool: Pool[_Slot]) -> None:
        self.client = slot.client
        self.db = slot.db
        self.server = slot.server
        self.url = slot.server.url(slot.db)
        self._ie_pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __repr__(self) -> str:
        return f"<RedisHandle db={self.db} url={self.url}>"

    async def _ie_reset(self) -> None:
        await self.client.flushdb()


async def _reap(control: Any, last: int) -> int:
    """Free slots whose owner died on this host (their databases are flushed by the next lease)."""
    freed = 0
    keys = [f"ie:slot:{i}" for i in range(1, last + 1)]
    for start in range(0, len(keys), 256):
        chunk = keys[start : start + 256]
        for key, value in zip(chunk, await control.mget(chunk), strict=True):
            if value is None:
                continue
            try:
                owner = json.loads(value)
            except ValueError:
                continue
            if owner_alive(owner) is False:
                await control.eval(_RELEASE, 1, key, value)
                freed += 1
    return freed


_reaped: set[str] = set()  # servers this process has already swept for dead owners' leases


class _Slots:
    """Leases logical databases from one server for one event loop."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.control = _aredis().Redis(**server.client_kwargs(0))
        # One control connection is plenty (each call is a microsecond script); a lock keeps a burst
        # of 200 concurrent leases from opening 200 connections.
        self.lock = anyio.Lock()

    async def create(self) -> _Slot:
        last = self.server.databases - 1
        if last < 1:
            raise ServiceUnavailable(
                "Redis", f"the server at {self.server.url(0)} has a single database; isolated_redis needs at "
                "least 2 (database 0 holds the leases)", fix="start it with --databases 1024",
            )
        async with self.lock:
            if self.server.url(0) not in _reaped:
                _reaped.add(self.server.url(0))
                await _reap(self.control, last)
            slot = int(await self.control.eval(_ACQUIRE, 0, _owner(), LEASE_TTL_MS, 1, last))
            if slot < 0 and await _reap(self.control, last):
                slot = int(await self.control.eval(_ACQUIRE, 0, _owner(), LEASE_TTL_MS, 1, last))
        if slot < 0:
            raise TryLater(
                f"all {last} Redis databases of {self.server.url(0)} are leased (by this and other processes); "
                "run fewer workers, lower the capacity, or use a server with more databases"
            )
        _heartbeat.add(self.server, slot)
        client = _aredis().Redis(**self.server.client_kwargs(slot))
        try:
            # A previous owner may have died mid-test: a fresh lease starts from an empty database.
            await client.flushdb()
        except BaseException:
            await self._release(slot, client)
            raise
        return _Slot(self.server, slot, client)

    async def reset(self, slot: _Slot) -> None:
        await slot.client.flushdb()

    async def destroy(self, slot: _Slot) -> None:
        try:
            await slot.client.flushdb()
        finally:
            await self._release(slot.db, slot.client)

    async def _release(self, db: int, client: Any) -> None:
        try:
            async with self.lock:
                await self.control.eval(_RELEASE, 1, f"ie:slot:{db}", _owner())
        finally:
            _heartbeat.remove(self.server, db)
            await client.aclose()

    async def aclose(self) -> None:
        await self.control.aclose()


@resource("redis")
async def isolated_redis() -> AsyncIterator[RedisHandle]:
    """A private, empty logical Redis database for one test, flushed when the test ends."""
    settings = current_settings()
    server = await servers.ensure_server(settings)
    scope = await current_scope()
    key = ("redis", server.url(0), settings.capacity)
    pool: Pool[_Slot] | None = scope.pools.get(key)
    if pool is None or pool.closed:
        slots = _Slots(server)
        capacity = max(1, min(settings.capacity, server.databases - 1))
        pool = scope.pool(
            key,
            lambda: Pool(
                f"redis databases ({server.url(0)})",
                create=slots.create,
                reset=slots.reset,
                destroy=slots.destroy,
                capacity=capacity,
                lease_timeout=settings.lease_timeout,
            ),
        )
        scope.on_close(slots.aclose)
    async with pool.lease() as lease:
        yield RedisHandle(lease.value, pool)
