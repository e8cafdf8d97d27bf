"""The thread that keeps this process's Redis slot leases alive (see :mod:`.redis`)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._ownership import Scope
from .._redact import redact_url

if TYPE_CHECKING:
    from .._servers.redis import RedisServer

__all__ = ["_Bank", "_LeaseKeeper", "flush_unleased", "prune"]

log = logging.getLogger("isolated_env")


class _LeaseKeeper:
    """Refreshes this process's slot leases from a thread, whatever event loops come and go, and
    marks a slot lost when its lease key is found taken or has not been refreshed within its TTL."""

    def __init__(
        self, refresh_script: str, owner: Callable[[], str], ttl_ms: Callable[[], int], every_s: Callable[[], float],
        *, key: Callable[[int], str] = "ie:slot:{}".format, what: Callable[[int], str] = "Redis database {}".format,
        connect: Callable[..., Any] | None = None,
    ) -> None:
        # Read through callables on every beat: tests shorten the TTL and the period.
        self._script = refresh_script
        self._owner = owner
        self._ttl_ms = ttl_ms
        self._every_s = every_s
        # What the leases are: their keys, their name in messages, and how the thread reaches the
        # server (the prefix leases of a cluster are refreshed through a cluster client).
        self._key, self._what, self._connect = key, what, connect
        self._lock = threading.Lock()
        self._held: dict[str, tuple[RedisServer, dict[int, Any]]] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.on_lost: Callable[[Any], None] | None = None  # told of each slot found lost
        self._period: float | None = None  # the period the thread last waited by

    def add(self, slot: Any) -> None:
        with self._lock:
            self._held.setdefault(slot.server.key, (slot.server, {}))[1][slot.db] = slot
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="isolated-env-redis-leases", daemon=True)
                self._thread.start()
            else:
                self._wake.set()  # the period may have changed (tests shorten it): the thread looks again

    def reused(self, slot: Any) -> bool:
        """Whether a held slot may be handed out again from a loop's pool: not if its lease was
        lost while it sat there. As :meth:`add` does, wakes the thread when its period has changed
        since it last looked (tests shorten it), or a slot handed out again would be kept by the
        old period, and a loss found too late."""
        if slot.lost is not None:
            return False
        if self._period is not None and self._every_s() != self._period:
            self._wake.set()
        return True

    def remove(self, slot: Any) -> None:
        self.discard(slot.server, slot.db)

    def discard(self, server: RedisServer, db: int) -> None:
        with self._lock:
            entry = self._held.get(server.key)
            if entry is not None:
                entry[1].pop(db, None)
                if not entry[1]:
                    del self._held[server.key]
            if not self._held:
                self._wake.set()

    def _run(self) -> None:
        last_ok: dict[str, float] = {}
        beating: dict[str, threading.Thread] = {}  # each server's beat in flight
        beat = time.monotonic()
        ttl_ms = self._ttl_ms()
        applied_ttl_s = ttl_ms / 1000

        def due() -> float:
            # Never later than a third of the TTL the last beat gave the keys: when the TTL grows
            # (tests shorten it for a while), keys set with the short one are renewed in time.
            every = self._period = self._every_s()
            return beat + min(every, applied_ttl_s / 3)

        while True:
            self._wake.wait(max(0.0, due() - time.monotonic()))
            with self._lock:
                # Decided under the lock: an add() racing with our exit either sees no thread (and
                # starts one) or puts a slot in _held that keeps this thread running.
                if not self._held:
                    self._thread = None
                    self._wake.clear()
                    return
                self._wake.clear()
                if time.monotonic() < due():
                    continue  # woken early by add(): not due yet
                held = [(url, server, dict(slots)) for url, (server, slots) in self._held.items()]
            beat = time.monotonic()
            ttl_ms = self._ttl_ms()
            applied_ttl_s = ttl_ms / 1000
            for url, server, slots in held:
                # Each server is beaten on a thread of its own: one slow to answer (stopped with
                # SIGSTOP, a network in trouble: up to the socket timeout) holds up no other's beat.
                # A server still on its last beat is skipped this time.
                running = beating.get(url)
                if running is not None and running.is_alive():
                    continue
                beating[url] = threading.Thread(
                    target=self._refresh_safely, args=(url, server, slots, last_ok, ttl_ms),
                    name="isolated-env-redis-lease-beat", daemon=True,
                )
                beating[url].start()
            for url in [u for u, t in beating.items() if not t.is_alive()]:
                del beating[url]

    def _refresh_safely(self, *args: Any) -> None:
        try:
            self._refresh(*args)
        except Exception as exc:  # whatever it was, the heartbeat goes on: the leases depend on it
            log.warning("isolated_env: a Redis lease heartbeat on %s failed (%r); trying again next beat",
                        redact_url(args[0]), exc)

    def _refresh(
        self, url: str, server: RedisServer, slots: dict[int, Any], last_ok: dict[str, float], ttl_ms: int
    ) -> None:
        from .._drivers.redis import sync_client

        keys = [self._key(db) for db in slots]
        try:
            # No retries: a server that is gone must not hold up the beat of the others (redis-py
            # >= 6 retries with a backoff of seconds by default); the next beat is the retry.
            timeouts: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2}
            client = (self._connect(server, **timeouts) if self._connect is not None
                      else sync_client(**server.client_kwargs(0), **timeouts, retry=None))
            try:
                lost = client.eval(self._script, len(keys), *keys, self._owner(), ttl_ms)
            finally:
                client.close()
        except Exception as exc:  # the server may answer on the next beat; the TTL decides
            from .._leases import stopped

            if stopped(server.unix_socket or (server.host or "127.0.0.1", server.port or 6379)):
                # It will not answer (a test's own server, stopped): its leases go now, and the
                # beats of the servers still up are not held up by it, beat after beat.
                log.info("isolated_env: the Redis server at %s stopped; its leases are lost", redact_url(url))
                with self._lock:
                    # Only what this beat looked at: a server started since on the same port (the
                    # same URL) may hold new leases here, which this server's end does not touch.
                    entry = self._held.get(url)
                    for db, slot in slots.items():
                        if entry is not None and entry[1].get(db) is slot:
                            del entry[1][db]
                    if entry is not None and not entry[1]:
                        del self._held[url]
                for slot in slots.values():
                    slot.lost = slot.lost or f"the lease of {self._what(slot.db)} was lost: its server stopped"
                    self._lost(slot)
                return
            log.warning("isolated_env: refreshing Redis leases on %s failed: %r", redact_url(url), exc)
            if time.monotonic() - last_ok.setdefault(url, time.monotonic()) > ttl_ms / 1000:
                for slot in slots.values():
                    slot.lost = slot.lost or (
                        f"the lease of {self._what(slot.db)} expired: its heartbeat could not reach the server "
                        f"for over {ttl_ms // 1000} s ({exc!r}); another run may have used the database"
                    )
                    self._lost(slot)
            return
        last_ok[url] = time.monotonic()
        for key in lost:
            db = int((key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1])
            slot = slots[db]
            with self._lock:
                current = self._held.get(url, (server, {}))[1].get(db)
            if current is not None and current is slot:  # not released meanwhile (a release deletes its own key first)
                slot.lost = (f"the lease of {self._what(db)} was taken by someone else while this test held "
                             "it (a FLUSHALL, or a lease key deleted); another test may have used the database")
                self._lost(slot)

    def _lost(self, slot: Any) -> None:
        if self.on_lost is not None:
            self.on_lost(slot)




def _drop_parked(slot: Any) -> None:
    """Close the sockets a banked slot carries for the next loop (a database slot's; see _redis_carry)."""
    drop = getattr(slot, "drop_parked", None)
    if drop is not None:
        drop()


class _Bank:
    """Database numbers this process holds the lease of and no event loop is using: flushed, kept
    alive by the keeper, and handed to the next loop that needs one without a round trip.

    A lease belongs to the process, a connection to a loop: when a loop closes (pytest-asyncio
    makes one per test), its clients are closed and its clean slots come here, so the next loop
    opens a client and nothing else, instead of leasing, flushing and releasing over a control
    connection of its own. The leases are given back when the process exits.
    """

    def __init__(self, keeper: _LeaseKeeper, release_script: str, owner: Callable[[], str]) -> None:
        self._keeper = keeper
        self._script = release_script
        self._owner = owner
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: dict[str, tuple[RedisServer, list[Any]]] = {}
        self._reaped: set[str] = set()
        self._hooked = False
        keeper.on_lost = self.forget

    def _mine(self) -> None:
        if self._pid != os.getpid():  # a forked child: its parent's leases are not its own
            self._idle.clear()
            self._reaped.clear()
            self._pid = os.getpid()
            self._hooked = False

    def first_use(self, server: RedisServer) -> bool:
        """True the first time this process leases from ``server`` (time to reap dead owners)."""
        with self._lock:
            self._mine()
            url = server.url(0)
            if url in self._reaped:
                return False
            self._reaped.add(url)
            return True

    def take(self, server: RedisServer) -> Any | None:
        """A clean slot of ``server`` this process still holds, or None."""
        with self._lock:
            self._mine()
            entry = self._idle.get(server.url(0))
            while entry is not None and entry[1]:
                slot = entry[1].pop()
                if slot.lost is None:
                    return slot
                self._keeper.remove(slot)  # lost while banked: never handed out
                _drop_parked(slot)
            return None

    def forget(self, slot: Any) -> None:
        """Take a lost slot out of the bank (it is never handed out, nor kept alive any more)."""
        with self._lock:
            entry = self._idle.get(slot.server.url(0))
            if entry is None or slot not in entry[1]:
                return
            entry[1].remove(slot)
            self._keeper.remove(slot)
            _drop_parked(slot)

    def put(self, slot: Any) -> None:
        """Bank ``slot`` (flushed, its client closed), still leased and kept alive."""
        with self._lock:
            self._mine()
            self._idle.setdefault(slot.server.url(0), (slot.server, []))[1].append(slot)
            if not self._hooked:
                self._hooked = True
                atexit.register(self.release_all)

    def banked(self) -> list[Any]:
        """Every slot in the bank now."""
        with self._lock:
            self._mine()
            return [slot for _, slots in self._idle.values() for slot in slots]

    def release_all(self) -> None:
        """Give back every banked lease (at exit; the keys expire by their TTL anyway)."""
        with self._lock:
            self._mine()
            idle, self._idle = self._idle, {}
        for server, slots in idle.values():
            for slot in slots:
                self._keeper.remove(slot)
                _drop_parked(slot)
            if not slots:
                continue
            try:
                from .._drivers.redis import sync_client

                timeouts: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
                connect = self._keeper._connect  # the keeper's: its leases' keys, its way to the server
                client = (connect(server, **timeouts) if connect is not None
                          else sync_client(**server.client_kwargs(0), **timeouts, retry=None))
                try:
                    for slot in slots:
                        client.eval(self._script, 1, self._keeper._key(slot.db), self._owner())
                finally:
                    client.close()
            except Exception as exc:  # the server may have stopped with its last user: nothing is left to free
                log.debug("isolated_env: giving back banked Redis leases on %s failed: %r",
                          redact_url(server.url(0)), exc)


# Atomic, so a lease taken meanwhile is never flushed under its holder: the lease key (database 0)
# is looked at and the database flushed in one step.
_FLUSH_UNLEASED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SELECT', ARGV[1])
local n = redis.call('DBSIZE')
if n > 0 then redis.call('FLUSHDB') end
return n
"""


async def flush_unleased(control: Any, *, dry_run: bool = False) -> list[int]:
    """Flush every database but 0 that holds keys and no lease: what a run whose lease ended (killed,
    on any machine) left; returns their numbers (with ``dry_run``, only lists them). A leased
    database is never touched."""
    flushed = []
    for name in await control.info("keyspace"):
        db = int(str(name).removeprefix("db"))
        if not db:
            continue
        if dry_run:
            if not await control.exists(f"ie:slot:{db}"):
                flushed.append(db)
        elif await control.eval(_FLUSH_UNLEASED, 1, f"ie:slot:{db}", db):
            flushed.append(db)
    return flushed


async def prune(server: RedisServer, *, kept: bool, scope: Scope, dry_run: bool) -> list[str]:
    """``isolated-env prune`` on one Redis server: the prefixes and databases of owners provably dead
    (with ``kept``, those kept for failed tests), and what holds keys under no lease. ``scope``
    narrows it to one run or this machine's runs: what has no lease has no owner left to tell, and
    is then left alone. With ``dry_run`` it is listed, nothing freed."""
    from .._drivers import redis as redis_driver
    from . import redis as db_mode
    from ._redis_prefixes import reap_prefixes

    prefixes = await reap_prefixes(server, kept=kept, scope=scope, dry_run=dry_run)
    if server.cluster or server.databases < 2:
        return prefixes
    control = redis_driver.asyncio_client(**server.client_kwargs(0))
    try:
        freed = await db_mode._reap(control, server.databases - 1, kept=kept, scope=scope, dry_run=dry_run)
        if scope == Scope():
            freed += [db for db in await flush_unleased(control, dry_run=dry_run) if db not in freed]
        for db in [] if dry_run else freed:
            client = redis_driver.asyncio_client(**server.client_kwargs(db))
            try:
                await client.flushdb()
            finally:
                await client.aclose()
    finally:
        await control.aclose()
    return prefixes + [f"redis database {db} ({redact_url(server.url(db))})" for db in freed]
