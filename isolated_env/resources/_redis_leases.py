"""The thread that keeps this process's Redis slot leases alive (see :mod:`.redis`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._redact import redact_url

if TYPE_CHECKING:
    from .._servers.redis import RedisServer

__all__ = ["_LeaseKeeper"]

log = logging.getLogger("isolated_env")


class _LeaseKeeper:
    """Refreshes this process's slot leases from a thread, whatever event loops come and go, and
    marks a slot lost when its lease key is found taken or has not been refreshed within its TTL."""

    def __init__(
        self, refresh_script: str, owner: Callable[[], str], ttl_ms: Callable[[], int], every_s: Callable[[], float]
    ) -> None:
        # Read through callables on every beat: tests shorten the TTL and the period.
        self._script = refresh_script
        self._owner = owner
        self._ttl_ms = ttl_ms
        self._every_s = every_s
        self._lock = threading.Lock()
        self._held: dict[str, tuple[RedisServer, dict[int, Any]]] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, slot: Any) -> None:
        with self._lock:
            self._held.setdefault(slot.server.key, (slot.server, {}))[1][slot.db] = slot
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isolated-env-redis-leases", daemon=True)
                self._thread.start()

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
        while True:
            self._wake.wait(self._every_s())
            with self._lock:
                # Decided under the lock: an add() racing with our exit either sees no thread (and
                # starts one) or puts a slot in _held that keeps this thread running.
                if not self._held:
                    self._thread = None
                    self._wake.clear()
                    return
                self._wake.clear()
                held = [(url, server, dict(slots)) for url, (server, slots) in self._held.items()]
            for url, server, slots in held:
                self._refresh(url, server, slots, last_ok)

    def _refresh(self, url: str, server: RedisServer, slots: dict[int, Any], last_ok: dict[str, float]) -> None:
        import redis

        keys = [f"ie:slot:{db}" for db in slots]
        try:
            client = redis.Redis(**server.client_kwargs(0), socket_timeout=5)
            try:
                lost = client.eval(self._script, len(keys), *keys, self._owner(), self._ttl_ms())
            finally:
                client.close()
        except Exception as exc:  # the server may answer on the next beat; the TTL decides
            log.warning("isolated_env: refreshing Redis leases on %s failed: %r", redact_url(url), exc)
            if time.monotonic() - last_ok.setdefault(url, time.monotonic()) > self._ttl_ms() / 1000:
                for slot in slots.values():
                    slot.lost = slot.lost or (
                        f"the lease of Redis database {slot.db} expired: its heartbeat could not reach the server "
                        f"for over {self._ttl_ms() // 1000} s ({exc!r}); another run may have used the database"
                    )
            return
        last_ok[url] = time.monotonic()
        for key in lost:
            db = int((key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[1])
            slot = slots[db]
            with self._lock:
                current = self._held.get(url, (server, {}))[1].get(db)
            if current is not None and current is slot:  # not released meanwhile (a release deletes its own key first)
                slot.lost = (f"the lease of Redis database {db} was taken by someone else while this test held "
                             "it (a FLUSHALL, or a lease key deleted); another test may have used the database")


