"""The thread that keeps a process's server-side leases alive (PostgreSQL and ClickHouse databases;
Redis slots have a keeper of their own, :mod:`isolated_env.resources._redis_leases`).

A lease lives where every machine sees it: in the resource's own label on the server, as ``exp``,
the end of the lease in the server's clock (:mod:`isolated_env._ownership` writes the label). A
:class:`Keeper` renews every lease a process holds on a server in one beat, every third of the TTL
(``ISOLATED_ENV_LEASE_TTL``), from a thread with an event loop of its own, whatever event loops
the tests come and go with. A lease that could not be renewed within its TTL, or that is found
relabelled or gone, is lost: the test holding it fails with ``IsolationBroken``. A server found
stopped (nothing listens on its socket on this machine, or its socket's directory is gone) is
dropped at once, its leases lost with it, instead of being knocked on for a TTL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._ownership import lease_ttl, me

__all__ = ["Keeper", "Renewer", "expired", "lease_label", "stopped"]

log = logging.getLogger("isolated_env")

Renewer = Callable[[Any, list[str]], Awaitable[tuple[dict[str, str], float]]]
"""``renew(conn, names)`` pushes the leases of ``names`` one TTL ahead; returns those found lost
(with why) and the server's time."""


class Keeper:
    """Renews this process's leases on servers of one kind from a thread."""

    def __init__(
        self,
        what: str,
        key: Callable[[Any], str],
        connect: Callable[[Any], Awaitable[Any]],
        close: Callable[[Any], Awaitable[None]],
        renew: Renewer,
        where: Callable[[Any], str | tuple[str, int]],
    ) -> None:
        self.what = what  # "PostgreSQL database", for messages
        self._where = where  # the server's unix socket path or (host, port): see stopped()
        self._key = key
        self._connect = connect
        self._close = close
        self._renew_names = renew
        self._lock = threading.Lock()
        self._held: dict[str, tuple[Any, set[str]]] = {}
        self._lost: dict[str, str] = {}
        self._offset: dict[str, float] = {}  # server clock minus ours, per server
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._pid = os.getpid()
        self._ttl_used = float("inf")  # the shortest TTL a lease was written with since the last beat
        self.beats = 0  # renewals sent (statistics for the benchmark)

    def hold(self, server: Any, name: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: no thread, and its parent's leases are not its own
                self._pid, self._held, self._lost, self._thread = os.getpid(), {}, {}, None
            self._held.setdefault(self._key(server), (server, set()))[1].add(name)
            self._ttl_used = min(self._ttl_used, lease_ttl())
            self._lost.pop(name, None)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"isolated-env-leases-{self.what}", daemon=True)
                self._thread.start()
            else:
                self._wake.set()

    def let_go(self, name: str) -> None:
        with self._lock:
            for key, (_server, names) in list(self._held.items()):
                names.discard(name)
                if not names:
                    del self._held[key]
            if not self._held:
                self._wake.set()

    def held(self) -> int:
        with self._lock:
            return sum(len(names) for _s, names in self._held.values())

    def lost(self, name: str) -> str | None:
        return self._lost.get(name)

    def offset(self, server: Any) -> float | None:
        return self._offset.get(self._key(server))

    def set_offset(self, server: Any, server_now: float) -> None:
        self._offset[self._key(server)] = server_now - time.time()

    async def expiry(self, server: Any, now: Callable[[], Awaitable[float]]) -> float:
        """When a lease taken now ends, in the server's clock (``now()`` asked once per server)."""
        offset = self.offset(server)
        if offset is None:
            self.set_offset(server, await now())
            offset = self.offset(server) or 0.0
        return round(time.time() + offset + lease_ttl(), 1)

    def _period(self) -> float:
        # A third of the TTL, and never longer than a third of the one leases were last written
        # with: when the TTL grows (tests shorten it for a while), those are renewed in time.
        return min(lease_ttl(strict=False), self._ttl_used) / 3

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        conns: dict[str, Any] = {}
        last_ok: dict[str, float] = {}
        beat = time.monotonic()
        try:
            while True:
                self._wake.wait(max(0.0, beat + self._period() - time.monotonic()))
                with self._lock:
                    # Decided under the lock: a hold() racing with our exit either sees no thread
                    # (and starts one) or puts a name in _held that keeps this thread running.
                    self._wake.clear()
                    if not self._held:
                        self._thread = None
                        return
                    if time.monotonic() < beat + self._period():
                        continue  # woken by hold(): the TTL may have changed, not due yet
                    held = [(key, server, set(names)) for key, (server, names) in self._held.items()]
                    self._ttl_used = lease_ttl(strict=False)  # what this beat writes
                beat = time.monotonic()
                for key, server, names in held:
                    loop.run_until_complete(self._beat(key, server, names, conns, last_ok))
        finally:
            for conn in conns.values():
                loop.run_until_complete(self._close(conn))
            loop.close()

    async def _beat(
        self, key: str, server: Any, names: set[str], conns: dict[str, Any], last_ok: dict[str, float]
    ) -> None:
        started = time.monotonic()
        try:
            conn = conns.get(key)
            if conn is None:
                conn = conns[key] = await asyncio.wait_for(self._connect(server), 5)
            lost, now = await asyncio.wait_for(self._renew_names(conn, sorted(names)), 5)
        except Exception as exc:  # the server may answer on the next beat; the TTL decides
            broken = conns.pop(key, None)
            if broken is not None:
                await self._close(broken)
            if stopped(self._where(server)):  # it will not answer: no beat to wait for
                log.info("isolated_env: the server of %s leases %s stopped; its leases are lost", self.what, key)
                last_ok.pop(key, None)
                for name in names:
                    self._mark(name, "its server stopped")
                return
            log.warning("isolated_env: renewing %s leases on %s failed: %r", self.what, key, exc)
            if started - last_ok.setdefault(key, started) > lease_ttl(strict=False):
                for name in names:
                    ttl = lease_ttl(strict=False)
                    self._mark(name, f"its heartbeat could not reach the server for over {ttl:g} s ({exc!r})")
            return
        self.beats += 1
        last_ok[key] = started
        self.set_offset(server, now)
        for name, why in lost.items():
            self._mark(name, why)

    def _mark(self, name: str, why: str) -> None:
        with self._lock:
            if not any(name in names for _s, names in self._held.values()):
                return  # let go meanwhile (dropped by its owner)
            self._lost[name] = f"the lease of {self.what} {name} was lost: {why}; another run may reap it"
        self.let_go(name)


def stopped(where: str | tuple[str, int]) -> bool:
    """Whether the server at ``where`` (a unix socket's path, or ``(host, port)``) has certainly
    stopped: its socket (or the directory it was in) is gone, or nothing listens on it on this
    machine. A remote host that refuses proves nothing (a restart, a balancer): there the TTL decides."""
    if isinstance(where, str):
        if not os.path.exists(where):
            return True
        family: socket.AddressFamily = socket.AF_UNIX
        target: Any = where
    else:
        host, port = where
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            return False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        target = ("127.0.0.1" if host == "localhost" else host, port)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(target)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:  # a timeout, an unreachable network: not proof of anything
        return False
    return False


def lease_label(extra: dict[str, Any], exp: float | None) -> str:
    """The label of a resource: its owner (this process) and ``extra``, with the lease's end."""
    return me().label(**extra, **({"exp": exp} if exp is not None else {}))


def expired(label: dict[str, Any], now: float) -> bool:
    """Whether a parsed label's lease has ended (False for a label with no lease)."""
    exp = label.get("exp")
    return isinstance(exp, (int, float)) and exp < now
