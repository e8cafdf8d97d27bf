"""isolated_redis(): a leased logical database of its own for each test, flushed on release.

Slots are leased through the server itself (``SET NX PX`` on a lease key in database 0, kept alive
by a heartbeat), so two processes — pytest-xdist workers, or two runs sharing one server — never
hold the same database. When every database is leased, a lease waits; it never collides. A lease
found taken, or not refreshed within its TTL, is marked lost and fails the test that holds it.

The heartbeat runs in a thread of its own, not in the event loop: a pytest session's loop only
runs while an async test or fixture does, and the idle slots of a worker that runs sync tests for
longer than the TTL would otherwise expire and be leased (and flushed) by another process.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import anyio

from .. import _background
from .._config import Settings
from .._contract import Kept, current_settings
from .._drivers import redis as redis_driver
from .._errors import ConfigError, IsolationBroken, ServiceUnavailable
from .._ownership import Scope, alive, lease_ttl, me, parse
from .._pool import TryLater
from .._redact import redact_url
from .._resource import ResourceContext
from .._runtime import Runtime
from .._servers import redis as servers
from .._servers.redis import RedisServer
from . import _redis_carry
from ._died import watch as _watch
from ._redis_flusher import BackgroundAdmin, RawAdmin
from ._redis_guard import test_client, untaint
from ._redis_handle import RedisHandle
from ._redis_leases import _Bank, _LeaseKeeper
from ._redis_pooled import RedisPooled

__all__ = ["RedisHandle", "RedisResource", "isolated_redis"]

log = logging.getLogger("isolated_env")

_ALL = Scope()
LEASE_TTL_MS: int | None = None  # None: ISOLATED_ENV_LEASE_TTL (tests set numbers)
HEARTBEAT_S: float | None = None  # None: a third of the TTL


def _ttl_ms(*, strict: bool = True) -> int:
    return LEASE_TTL_MS if LEASE_TTL_MS is not None else int(lease_ttl(strict=strict) * 1000)


def _heartbeat_s(*, strict: bool = True) -> float:
    return HEARTBEAT_S if HEARTBEAT_S is not None else _ttl_ms(strict=strict) / 3000


# What the heartbeat threads read: a bad setting for a while keeps the last good TTL there.
_beat_ttl_ms = functools.partial(_ttl_ms, strict=False)
_beat_every_s = functools.partial(_heartbeat_s, strict=False)


def acquire_script(key_prefix: str) -> str:
    """The script that leases the first free number in ARGV[3]..ARGV[4] (its key ``key_prefix<n>``
    set to the owner ARGV[1] for ARGV[2] ms, if nobody holds it) and returns it, or -1."""
    return f"""
for i = tonumber(ARGV[3]), tonumber(ARGV[4]) do
  if redis.call('SET', '{key_prefix}' .. i, ARGV[1], 'NX', 'PX', ARGV[2]) then return i end
end
return -1
"""


_ACQUIRE = acquire_script("ie:slot:")
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) else lost[#lost + 1] = key end
end
return lost
"""
_KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]); return 1 end
return 0
"""


def _owner() -> str:
    """This process's label on its leases (per pid: a forked child does not wear its parent's)."""
    return me().label()


class _Slot:
    __slots__ = ("admin", "clean", "client", "db", "lost", "parked", "raw", "server", "url")

    def __init__(self, server: RedisServer, db: int, client: Any, admin: Any = None) -> None:
        self.server = server
        self.db = db
        self.client = client  # the test's: the restricted user of ``db`` on a server with guard rails
        # Ours, bound to ``db`` as the admin user: the flush on release goes through it, so nothing
        # a test did to its own connections (even an AUTH as another user) can point it elsewhere.
        self.admin = admin if admin is not None else client
        self.url = server.test_url(db)  # once per slot: it derives the user's password
        self.lost: str | None = None  # why the lease was lost, once the heartbeat finds out
        self.clean = True  # flushed since a test last had it
        self.parked: list[Any] = []  # the test client's sockets of the last loop (see _redis_carry)
        self.raw: RawAdmin | None = None  # the admin socket that flushes it in any loop (see _redis_flusher)

    def drop_parked(self) -> None:
        """Close the sockets parked for the next loop (the lease ends, or is lost, or kept)."""
        _redis_carry.close(self.parked)
        raw, self.raw = self.raw, None
        if raw is not None:
            raw.close()

    async def close_clients(self) -> None:
        """Close the test's client and ours (one, when they are the same); the slot keeps neither."""
        client, admin, self.client, self.admin = self.client, self.admin, None, None
        try:
            if client is not None:
                await client.aclose()
        finally:
            if admin is not None and admin is not client:
                await admin.aclose()


async def _reap(
    control: Any, last: int, *, kept: bool = False, scope: Scope = _ALL, dry_run: bool = False
) -> list[int]:
    """Free slots whose owner provably died (in this machine and PID namespace; any other owner's
    lease ends by its TTL), their databases flushed by the next lease;
    with ``kept``, also the slots kept for failed tests (flushed here). ``scope`` narrows it to one
    run or this machine's runs; with ``dry_run`` nothing is freed, only listed."""
    freed = []
    keys = [f"ie:slot:{i}" for i in range(1, last + 1)]
    for start in range(0, len(keys), 256):
        chunk = keys[start : start + 256]
        for key, value in zip(chunk, await control.mget(chunk), strict=True):
            parsed = parse(value) if value is not None else None
            if parsed is None or not scope.covers(parsed[0]):
                continue
            if parsed[1].get("kept"):
                if not kept:
                    continue
            elif alive(parsed[0]) is not False:
                continue
            if dry_run or await control.eval(_RELEASE, 1, key, value):
                freed.append(int(key.rsplit(":", 1)[1]))
    if freed and not dry_run:
        why = "their owner process died" + (", or kept for failed tests (prune --kept)" if kept else "")
        log.info("isolated_env: freed Redis database(s) %s: %s", ", ".join(map(str, freed)), why)
    return freed


_keeper = _LeaseKeeper(_REFRESH, _owner, _beat_ttl_ms, _beat_every_s)
_bank = _Bank(_keeper, _RELEASE, lambda: _owner())


class _Slots:
    """Leases logical databases from one server for one event loop, and keeps the leases alive.

    A slot another loop of this process gave back (the bank) is taken first: then this loop only
    opens its client. The control connection is opened when a new lease is needed."""

    def __init__(self, server: RedisServer, runtime: Runtime) -> None:
        self.server = server
        self.runtime = runtime
        self._control: Any = None
        # One control connection is plenty (each call is a microsecond script); a lock keeps a burst
        # of 200 concurrent leases from opening 200 connections.
        self.lock = anyio.Lock()

    @property
    def control(self) -> Any:
        if self._control is None:
            self._control = redis_driver.asyncio_client(**self.server.client_kwargs(0))
        return self._control

    async def create(self) -> _Slot:
        last = self.server.databases - 1
        if last < 1:
            raise ServiceUnavailable(
                "Redis", f"the server at {self.server.redacted} has a single database; isolated_redis needs at "
                "least 2 (database 0 holds the leases)", fix="start it with --databases 1024",
            )
        banked: _Slot | None = _bank.take(self.server)
        if banked is not None and banked.server.acl_secret != self.server.acl_secret:
            _keeper.remove(banked)  # banked before its server restarted: that lease went with it
            banked.drop_parked()
            banked = None
        if banked is not None:
            if self.server.guarded and not _background.is_background():
                # Another loop had it, and this one may not outlive its test: flushes go over the
                # slot's own admin socket (or the background loop's client, on TLS), and only the
                # test's client is made here.
                if banked.raw is None and RawAdmin.usable(self.server):
                    banked.raw = RawAdmin(self.server, banked.db)
                banked.admin = banked.raw or BackgroundAdmin(self.server, banked.db)
                banked.client = test_client(self.server, banked.db, banked.parked)
                return banked
            banked.admin = redis_driver.asyncio_client(**self.server.client_kwargs(banked.db))
            banked.client = test_client(self.server, banked.db, banked.parked) if self.server.guarded else banked.admin
            return banked
        async with self.lock:
            slot = int(await self.control.eval(_ACQUIRE, 0, _owner(), _ttl_ms(), 1, last))
            if slot < 0 and await _reap(self.control, last):
                slot = int(await self.control.eval(_ACQUIRE, 0, _owner(), _ttl_ms(), 1, last))
        if slot < 0:
            raise TryLater(
                f"all {last} Redis databases of {self.server.redacted} are leased (by this and other "
                "processes); run fewer workers, lower the capacity, or use a server with more databases"
            )
        admin = redis_driver.asyncio_client(**self.server.client_kwargs(slot))
        try:
            # A previous owner may have died mid-test: a fresh lease starts from an empty database.
            await admin.flushdb()
            client = test_client(self.server, slot) if self.server.guarded else admin
        except BaseException:
            try:
                await self._release(slot)
            finally:
                await admin.aclose()
            raise
        item = _Slot(self.server, slot, client, admin)
        _keeper.add(item)
        if _bank.first_use(self.server):
            # Freeing dead owners' slots is no part of the first lease (one that finds every slot
            # taken reaps above): it goes on in the background, settled before the event loop closes.
            if self.runtime.closed:
                await self._reap(last)
            else:
                await self.runtime.spawn(self._reap, last, name="isolated_env redis reaper")
        return item

    async def clean(self, slot: _Slot) -> None:
        if slot.lost is not None:
            raise IsolationBroken(slot.lost)
        await slot.admin.flushdb()
        await untaint(slot.client)
        slot.clean = True

    async def destroy(self, slot: _Slot) -> None:
        if slot.clean and slot.lost is None:
            # Idle in a closing loop's pool, flushed when it came back: the lease stays with the
            # process for the next loop, only this loop's clients go (the test client's sockets
            # with it, for the next loop's test client).
            carried = _redis_carry.detach(slot.client, _redis_carry.MAX_CARRIED - len(slot.parked))
            try:
                await slot.close_clients()
            except BaseException:
                _redis_carry.close(carried)
                raise
            slot.parked.extend(carried)
            _bank.put(slot)
            return
        if slot.lost is not None:
            # Not ours any more (its server stopped, it expired, or another run took it): nothing
            # to flush or give back, and a stopped server would only keep this waiting.
            slot.drop_parked()
            _keeper.discard(self.server, slot.db)
            await slot.close_clients()
            return
        try:
            await slot.admin.flushdb()
        finally:
            try:
                await self._release(slot.db)
            finally:
                try:
                    await slot.close_clients()
                finally:
                    slot.drop_parked()  # after the flush: its admin socket is among them

    async def keep(self, slot: _Slot) -> Kept:
        label = json.dumps({**json.loads(_owner()), "kept": True}, separators=(",", ":"))
        async with self.lock:
            await self.control.eval(_KEEP, 1, f"ie:slot:{slot.db}", _owner(), label)
        _keeper.remove(slot)
        slot.drop_parked()
        await slot.close_clients()
        server = self.server
        reach = (f"redis-cli -s {server.unix_socket} -n {slot.db}" if server.unix_socket
                 else f"redis-cli -h {server.host} -p {server.port or 6379} -n {slot.db}")
        if server.password_file:
            reach = f'REDISCLI_AUTH="$(cat {server.password_file})" {reach}'
        elif server.password:
            reach = f"REDISCLI_AUTH=<the password of TEST_REDIS_URL> {reach}"
        return Kept("redis", f"database {slot.db} at {redact_url(server.url(slot.db))}", reach)

    async def _reap(self, last: int) -> None:
        async with self.lock:
            await _reap(self.control, last)

    async def _release(self, db: int) -> None:
        _keeper.discard(self.server, db)
        async with self.lock:
            await self.control.eval(_RELEASE, 1, f"ie:slot:{db}", _owner())

    async def aclose(self) -> None:
        if self._control is not None:
            await self._control.aclose()


def close_parked() -> None:
    """Close the test connections' sockets banked slots carry for a next loop (a test run ends:
    they would count as its leaked descriptors); the leases stay banked."""
    for slot in _bank.banked():
        slot.drop_parked()


def _slots_for(server: RedisServer, runtime: Runtime) -> _Slots:
    key = ("redis-slots", server.key)
    slots: _Slots | None = runtime.objects.get(key)
    if slots is None:
        slots = runtime.objects[key] = _Slots(server, runtime)
        runtime.on_close(slots.aclose)
    return slots


class RedisResource(RedisPooled[_Slot, RedisHandle]):
    """A private, empty logical Redis database for one test, flushed when the test ends."""

    handle = RedisHandle
    what, many, pool_tag = "database", "databases", "redis"
    keeper = _keeper

    def slots_for(self, server: RedisServer, runtime: Runtime) -> _Slots:
        return _slots_for(server, runtime)

    def describe(self, item: _Slot) -> str:
        return f"database {item.db}"

    def capacity(self) -> int:
        return max(1, min(current_settings().capacity, self.server.databases - 1))

    def nested(self, handle: RedisHandle) -> Any:
        """A database of a narrower scope's own, starting with a copy of ``handle``'s keys (:mod:`._redis_nest`)."""
        from ._redis_nest import nested_database

        return nested_database(self, handle)

    @classmethod
    async def self_check(cls) -> None:
        """``isolated-env doctor``: two tests never share a namespace, and keys never outlive one."""
        from ._redis_prefix import self_check

        await self_check()

    @classmethod
    async def reap(
        cls, settings: Settings, *, kept: bool = False, scope: Scope = _ALL, dry_run: bool = False
    ) -> list[str]:
        from ._redis_leases import prune

        return await prune(await servers.ensure_server(settings), kept=kept, scope=scope, dry_run=dry_run)


def isolated_redis(
    *, keep_on_failure: bool | None = None, admin: bool = False, mode: str | None = None
) -> ResourceContext[RedisHandle]:
    """A private, empty logical Redis database for one test, flushed when the test ends.

    The test's client is restricted to its database (guard rails, on the embedded server): commands
    reaching other tests' data or the server itself are refused. ``admin=True`` gives instead a
    server of the test's own, started for it and stopped after it, where every command is allowed.
    With ``keep_on_failure`` (or ``--isolated-env-keep-failed``) a failed test's database stays
    leased and filled, and the summary says how to reach it. On a server with one database (a
    cluster, a managed Redis) each test gets a key prefix instead, ``handle.key(name)``
    (:mod:`._redis_prefix`); ``mode="db"`` or ``"prefix"`` chooses.
    """
    if admin:
        if keep_on_failure:
            raise ConfigError(
                "isolated_redis(admin=True, keep_on_failure=True): a private admin server is stopped with "
                "its test and cannot be kept; drop one of the two"
            )
        from ._redis_admin import admin_redis

        return admin_redis()
    from ._redis_prefix import by_mode

    return by_mode(keep_on_failure, mode)


isolated_redis.resource_class = RedisResource  # type: ignore[attr-defined]
_watch("redis", lambda server: server.url(0))
