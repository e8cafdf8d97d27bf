"""Idle engine connections kept for the next request with the same connection string.

Opening and closing a chdb connection costs about as much as a small query (0.3 to 0.6 ms, more on a
loaded machine): a request without a session takes an idle connection opened with the same
connection string (its settings and database ride in it) and gives it back when its reply is
over. A connection goes back only when nothing of the request can outlive it: the statement
succeeded (a stream read to its end) and is not one that changes the connection itself (``SET``,
``USE``, temporary tables, external data). Anything else is closed, as before.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from .sql import first_word

__all__ = ["CONNECTION_SAFE", "Idle", "Use", "connection_string", "reusable"]

# A value that can ride in a connection string as it is. chdb re-parses that string as a URL
# query (``+`` would become a space, an empty value a bare flag, meaning 1), so anything else is
# applied with ``SET`` after connecting.
CONNECTION_SAFE = re.compile(r"^[A-Za-z0-9_.:-]+$")


# Statements that leave a connection as they found it: no current database, setting, role or
# temporary table of the connection changes (a SETTINGS clause lasts for its statement only).
_KEEPS_CONNECTION = frozenset({
    b"SELECT", b"WITH", b"INSERT", b"SHOW", b"DESCRIBE", b"DESC", b"EXISTS", b"EXPLAIN", b"CREATE", b"DROP",
    b"ALTER", b"RENAME", b"TRUNCATE", b"OPTIMIZE", b"CHECK", b"DELETE", b"UPDATE", b"ATTACH", b"DETACH",
})


def connection_string(path: str, settings: Mapping[str, str], database: str | None) -> tuple[str, dict[str, str]]:
    """The connection string for ``settings`` and ``database``, and the settings left for ``SET``."""
    options: dict[str, str] = {}
    late: dict[str, str] = {}
    for name, value in settings.items():
        (options if CONNECTION_SAFE.match(value) else late)[name] = value
    if database and CONNECTION_SAFE.match(database):
        options["database"] = database
    return path + ("?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else ""), late


def reusable(sql: str) -> bool:
    """Whether a connection that ran ``sql`` successfully may serve another request."""
    return first_word(sql) in _KEEPS_CONNECTION and "TEMPORARY" not in sql.upper()


class Idle:
    """Idle connections by connection string: a few per string, a bounded number in all (the
    least recently used string's go first)."""

    PER_TARGET = 8
    TOTAL = 64

    def __init__(self, close: Callable[[Any], None]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._idle: OrderedDict[str, list[Any]] = OrderedDict()
        self._count = 0

    def take(self, target: str) -> Any | None:
        with self._lock:
            conns = self._idle.get(target)
            if not conns:
                return None
            self._count -= 1
            conn = conns.pop()
            if not conns:
                del self._idle[target]
            return conn

    def give(self, target: str, conn: Any) -> None:
        surplus: list[Any] = []
        with self._lock:
            conns = self._idle.setdefault(target, [])
            self._idle.move_to_end(target)
            if len(conns) >= self.PER_TARGET:
                surplus.append(conn)
            else:
                conns.append(conn)
                self._count += 1
            while self._count > self.TOTAL:
                oldest, old = next(iter(self._idle.items()))
                surplus.append(old.pop(0))
                self._count -= 1
                if not old:
                    del self._idle[oldest]
        for extra in surplus:
            self._close(extra)

    def clear(self) -> None:
        with self._lock:
            conns = [conn for group in self._idle.values() for conn in group]
            self._idle.clear()
            self._count = 0
        for conn in conns:
            self._close(conn)


class Use:
    """A request's connection: given back to the idle ones (``target``: its connection string) if
    the request succeeded and a stream of it was read to its end, else closed."""

    __slots__ = ("chunks", "conn", "ok", "target")

    def __init__(self, conn: Any, target: str | None) -> None:
        self.conn = conn
        self.target = target
        self.ok = True
        self.chunks: Any = None
