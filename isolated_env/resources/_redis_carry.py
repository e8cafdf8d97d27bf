"""A test client's Redis connections carried from one event loop to the next: the socket, not
redis-py's connection object.

redis-py binds a connection to the loop whose streams it reads, and pytest-asyncio makes a loop
per test, so every test would open a socket and log in again (``AUTH``/``HELLO``, ``CLIENT
SETINFO`` twice and ``SELECT``; redis-py 8 does that handshake twice on a unix socket), most of a
test's Redis cost. A unix or TCP socket is bound to no loop. When a closing loop gives its slot
back to the bank, the test client's idle connections (in the pool, nothing unread, not subscribed,
not TLS) are duplicated (``os.dup``) before the client closes, and travel with the slot. The next
loop's test client of that slot (same server, database and user) wraps one in its own streams
instead of connecting, and skips the handshake: the server session is the one it was, as it would
be had the loop stayed (a test of a session loop gets the previous test's connection object
itself). A socket on which something arrived while parked, or that the server closed, is dropped
for a new connection. At most one loop holds a socket at a time: the closing loop's transport is
closed before the slot is banked, and a slot is in one loop or in the bank.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

__all__ = ["MAX_CARRIED", "Carried", "close", "detach"]

MAX_CARRIED = 4  # per slot: a test rarely holds more connections at once

# A parked socket, with the parser class its connection read it with (RESP2 or RESP3, set by the
# handshake) and that parser's exception classes.
_Parked = tuple[socket.socket, type, Any]


class Carried:
    """Mixed into a test client's connection class: ``parked`` (the slot's list, shared with it)
    gives the first connections of a new loop a socket of the last loop instead of a new one."""

    parked: Any = ()  # a class per client sets its slot's list (see _redis_guard)
    _carried = False

    async def _connect(self) -> None:
        while self.parked:
            sock, parser_class, exceptions = self.parked.pop()
            if not _idle(sock):
                sock.close()
                continue
            try:
                if sock.family == socket.AF_UNIX:
                    reader, writer = await asyncio.open_unix_connection(sock=sock)
                else:
                    reader, writer = await asyncio.open_connection(sock=sock)
            except OSError:
                sock.close()
                continue
            self._reader, self._writer = reader, writer
            if type(self._parser) is not parser_class:  # type: ignore[attr-defined]
                self.set_parser(parser_class)  # type: ignore[attr-defined]
                self._parser.EXCEPTION_CLASSES = exceptions  # type: ignore[attr-defined]
            self._carried = True
            return
        await super()._connect()  # type: ignore[misc]

    def _adopted(self) -> bool:
        """True (once) right after ``_connect`` carried a socket: its parser is pointed at the new
        streams and the handshake is skipped (the server session is logged in and selected)."""
        if not self._carried:
            return False
        self._carried = False
        reset = getattr(self, "_reset_himport_state", None)
        if reset is not None:
            reset()
        self._parser.on_connect(self)  # type: ignore[attr-defined]
        return True

    async def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        if not self._adopted():
            await super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]

    async def on_connect(self, *args: Any, **kwargs: Any) -> None:
        if not self._adopted():
            await super().on_connect(*args, **kwargs)  # type: ignore[misc]


def _idle(sock: socket.socket) -> bool:
    """Nothing arrived on ``sock`` while it was parked, and the server has not closed it."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False  # data, or the end of the session


def detach(client: Any, room: int) -> list[_Parked]:
    """Duplicate the sockets of up to ``room`` idle connections of ``client`` (before it closes, in
    its loop): connected, back in the pool, nothing unread, not subscribed, not TLS."""
    out: list[_Parked] = []
    pool = getattr(client, "connection_pool", None)
    for conn in list(getattr(pool, "_available_connections", ()) or ()):
        if len(out) >= room:
            break
        writer, reader, parser = getattr(conn, "_writer", None), getattr(conn, "_reader", None), conn._parser
        if (writer is None or reader is None or not isinstance(conn, Carried) or getattr(conn, "_subscribed", True)
                or writer.is_closing() or writer.get_extra_info("sslcontext") is not None
                or getattr(reader, "_buffer", b"x") or getattr(parser, "_buffer", b"")
                or getattr(parser, "_chunks", None)):
            continue
        raw = writer.get_extra_info("socket")
        if raw is None:
            continue
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
            sock.setblocking(False)
        except OSError:
            continue
        out.append((sock, type(parser), getattr(parser, "EXCEPTION_CLASSES", None)))
    return out


def close(parked: list[_Parked]) -> None:
    """Close parked sockets (the slot is released, kept, lost, or the process ends)."""
    items, parked[:] = list(parked), []
    for sock, _, _ in items:
        with contextlib.suppress(OSError):
            sock.close()
