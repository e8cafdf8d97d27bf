"""PostgreSQL sessions that outlive an event loop: a connection of a closing loop is parked (its
socket, not its asyncpg object) and the next loop's connection to the same database takes it over.

asyncpg binds a connection to the loop that opened it, and pytest-asyncio makes a loop per test,
so every test would pay a new server backend (about 2 ms here, most of a transaction-mode test).
A unix socket is bound to no loop. When a loop's pool closes, a clean connection (rolled back) is
detached from asyncpg without a Terminate message and sent ``DISCARD ALL`` (no prepared statement,
setting, temp table, lock or LISTEN is left); its socket waits here, and the loop that takes it
over reads that reply, so neither loop waits a round trip for it. A new asyncpg
connection with the same startup parameters is then given that socket: the startup packet asyncpg
writes is swallowed (it must be byte for byte the one the session was started with) and the
server's greeting, recorded when the session was first opened, is replayed to it, as a pooler
such as PgBouncer does for its clients. Only the messages before ``ReadyForQuery`` are replayed,
less the authentication exchange; the server's process id and cancel key are the real ones.

The seam is asyncpg calling ``loop.create_unix_connection`` or ``loop.create_connection`` (TCP,
where asyncpg's default ``sslmode=prefer`` asks for TLS first: a plaintext session is parked, and
the TLS question is answered "no" for it, as its server did): both are wrapped on the loop
instance (asyncio's own loops only), passing every call through untouched except the one of the
connect that registered for it. A TLS session is never parked. Anything unexpected (another
packet, a socket that has data or has closed) falls back to a new connection.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["close_all", "connect", "park", "parked"]

log = logging.getLogger("isolated_env")

_MAX_PARKED_PER_KEY = 64

_lock = threading.Lock()
# A parked session: its socket, the startup packet it was opened with, and its greeting (which
# carries the backend's own process id and cancel key: it belongs to that session alone).
_Session = tuple[socket.socket, bytes, bytes]
_parked: dict[tuple[Any, ...], list[_Session]] = {}
# asyncpg connection → (key, transport, startup packet, greeting), once its startup is known.
_transports: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Any, Any]] = weakref.WeakKeyDictionary()
_Handlers = dict[asyncio.Task[Any], Callable[..., Any]]
_pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Handlers] = weakref.WeakKeyDictionary()
_pid = os.getpid()
_hooked = False


def _key(kwargs: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def _messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, at = [], 0
    while at + 5 <= len(data):
        (length,) = struct.unpack_from("!I", data, at + 1)
        out.append((data[at : at + 1], data[at : at + 1 + length]))
        at += 1 + length
    return out


def _replayable(greeting: bytes) -> bytes:
    """The greeting without the authentication exchange: AuthenticationOk, then everything else."""
    kept = []
    for kind, message in _messages(greeting):
        if kind == b"R" and message[5:9] != b"\x00\x00\x00\x00":
            continue  # a password or SASL request: the taken-over session is authenticated already
        kept.append(message)
    return b"".join(kept)


def _complete(greeting: bytes) -> bool:
    found = _messages(greeting)
    return bool(found) and found[-1][0] == b"Z" and sum(len(m) for _, m in found) == len(greeting)


class _Record(asyncio.Protocol):
    """Sits in front of asyncpg's protocol for the startup exchange of a new session, noting the
    startup packet and the greeting, then steps aside."""

    def __init__(self, real: Any, key: tuple[Any, ...]) -> None:
        self.real = real
        self.key = key
        self.startup: bytes | None = None
        self.greeting = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        write = transport.write

        def first(data: Any) -> None:
            if self.startup is None:
                self.startup = bytes(data)
            write(data)

        transport.write = first
        try:
            self.real.connection_made(transport)
        finally:
            del transport.write

    def data_received(self, data: bytes) -> None:
        self.greeting += data
        if _complete(bytes(self.greeting)):
            self.transport.set_protocol(self.real)
        self.real.data_received(data)

    def session(self) -> tuple[bytes, bytes] | None:
        """The startup packet and replayable greeting, once the startup exchange is over."""
        greeting = bytes(self.greeting)
        if self.startup is None or not _complete(greeting):
            return None
        return self.startup, _replayable(greeting)

    def eof_received(self) -> bool | None:
        return bool(self.real.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.real.connection_lost(exc)

    def pause_writing(self) -> None:
        self.real.pause_writing()

    def resume_writing(self) -> None:
        self.real.resume_writing()


class _Mismatch(Exception):
    pass


class _Adopt(asyncio.Protocol):
    """Hands asyncpg's protocol a parked session: its startup packet is checked and swallowed,
    the recorded greeting is fed to it, then it talks to the server directly."""

    def __init__(self, real: Any, startup: bytes, greeting: bytes) -> None:
        self.real = real
        self.startup = startup
        self.greeting = greeting
        self.matched = False

    def connection_made(self, transport: Any) -> None:
        transport.set_protocol(self.real)
        written: list[bytes] = []
        transport.write = lambda data: written.append(bytes(data))
        try:
            self.real.connection_made(transport)
        finally:
            del transport.write
        if not written:  # TCP: asyncpg asks for TLS first (sslmode prefer), then writes the startup
            self._negotiate(transport)
        elif written == [self.startup]:
            self.matched = True
            self.real.data_received(self.greeting)
        else:  # asyncpg asked for something else: this session will not do
            transport.abort()

    def _negotiate(self, transport: Any) -> None:
        """Answer asyncpg's SSLRequest with the server's "no" of the session's own start (a
        parked session is a plaintext one), then check and swallow its startup packet."""
        loop = asyncio.get_running_loop()

        def write(data: Any) -> None:
            data = bytes(data)
            if data == _SSL_REQUEST and not self.matched:
                loop.call_soon(lambda: transport.get_protocol().data_received(b"N"))
                return
            del transport.write
            if data != self.startup:
                transport.abort()
                return
            self.matched = True  # asyncpg hands the transport to its protocol right after this write
            loop.call_soon(lambda: transport.get_protocol().data_received(self.greeting))

        transport.write = write


_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _record_after_negotiation(transport: Any, key: tuple[Any, ...], seen: dict[str, Any]) -> None:
    """TCP, sslmode prefer: asyncpg asks for TLS, and on the server's "no" writes the startup packet
    and hands the transport to its protocol (both watched here); a TLS session is never recorded."""
    recorder = _Record(None, key)
    set_protocol = transport.set_protocol

    def write(data: Any) -> None:
        if bytes(data) != _SSL_REQUEST:
            recorder.startup = bytes(data)
            del transport.write
        type(transport).write(transport, data)

    def hand_over(protocol: Any) -> None:
        del transport.set_protocol
        transport.__dict__.pop("write", None)
        if recorder.startup is None or type(protocol).__module__.startswith("asyncio"):
            set_protocol(protocol)  # start_tls: the session is TLS, and stays unrecorded
            return
        recorder.real, recorder.transport = protocol, transport
        seen["session"] = recorder.session
        set_protocol(recorder)

    transport.write = write
    transport.set_protocol = hand_over


def _install(loop: asyncio.AbstractEventLoop) -> _Handlers | None:
    handlers = _pending.get(loop)
    if handlers is not None:
        return handlers
    if type(loop).__module__.split(".")[0] != "asyncio":
        return None  # uvloop and others: their methods cannot be wrapped on the instance
    handlers = _pending[loop] = {}

    def seam(original: Any) -> Any:
        async def create(protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            handler = handlers.pop(task, None) if task is not None else None
            if handler is None:
                return await original(protocol_factory, *args, **kwargs)
            return await handler(original, protocol_factory, *args, **kwargs)

        return create

    loop.create_unix_connection = seam(loop.create_unix_connection)  # type: ignore[method-assign]
    loop.create_connection = seam(loop.create_connection)  # type: ignore[method-assign]
    return handlers


_DISCARD = b"Q" + struct.pack("!I", 4 + len(b"DISCARD ALL\x00")) + b"DISCARD ALL\x00"


async def _settled(sock: socket.socket) -> bool:
    """Read the reply to the ``DISCARD ALL`` sent when ``sock`` was parked: True when it ended
    the way a clean idle session does (no error, ``ReadyForQuery`` idle) and nothing came after."""
    loop = asyncio.get_running_loop()
    reply = b""
    try:
        async with asyncio.timeout(5.0):
            while not _complete(reply):
                try:
                    chunk = sock.recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    return False  # the server ended the session (a dropped database, a restart)
                reply += chunk
    except (OSError, TimeoutError):
        return False
    kinds = [kind for kind, _ in _messages(reply)]
    if b"E" in kinds or reply[-1:] != b"I":
        return False  # DISCARD ALL failed, or the session is not idle after it
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return False  # more data, or the end of the session, after the reply
    except BlockingIOError:
        return True  # nothing after the reply: as a fresh session
    except OSError:
        return False


async def _take(key: tuple[Any, ...]) -> _Session | None:
    """A parked session of ``key``, its ``DISCARD ALL`` answered; the unfit ones are closed."""
    while True:
        with _lock:
            _forked()
            sessions = _parked.get(key)
            if not sessions:
                return None
            parked = sessions.pop()
            if not sessions:
                del _parked[key]
        if await _settled(parked[0]):
            return parked
        parked[0].close()  # data arrived while parked, the session ended, or the socket broke


def _forked() -> None:
    global _pid, _hooked
    if _pid != os.getpid():  # a forked child must not share its parent's sessions
        _parked.clear()
        _pid = os.getpid()
        _hooked = False


async def connect(module: Any, kwargs: dict[str, Any]) -> Any:
    """``module.connect(**kwargs)``, on a parked session of the same parameters when one waits."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    handlers = _install(loop) if task is not None and kwargs.get("host") and not kwargs.get("ssl") else None
    if handlers is None or task is None:
        return await module.connect(**kwargs)
    key = _key(kwargs)
    parked = await _take(key)
    seen: dict[str, Any] = {}

    async def record(original: Any, factory: Any, *args: Any, **kw: Any) -> Any:
        transport, proto = await original(lambda: _Record(factory(), key), *args, **kw)
        seen["transport"] = transport
        if proto.startup is None:  # TCP: the SSL negotiation comes first
            _record_after_negotiation(transport, key, seen)
        else:
            seen["session"] = proto.session
        return transport, proto.real

    async def adopt(original: Any, factory: Any, *args: Any, **kw: Any) -> Any:
        assert parked is not None
        sock, startup, greeting = parked
        adopting = _Adopt(factory(), startup, greeting)
        seen["adopting"] = adopting
        transport, proto = await original(lambda: adopting, sock=sock, **kw)
        if transport.is_closing():
            raise _Mismatch("asyncpg's startup packet differs from the parked session's")
        seen["transport"], seen["session"] = transport, lambda: (startup, greeting)
        return transport, proto.real

    handlers[task] = adopt if parked is not None else record
    try:
        try:
            conn = await module.connect(**kwargs)
        except Exception:
            if parked is None or seen.get("adopting") is None or seen["adopting"].matched:
                raise
            raise _Mismatch("asyncpg's startup packet differs from the parked session's") from None
    except _Mismatch:
        seen.clear()
        log.debug("isolated_env: a parked PostgreSQL session did not fit; opening a new one")
        handlers[task] = record
        conn = await module.connect(**kwargs)
    finally:
        handlers.pop(task, None)
    if "session" in seen:
        with _lock:  # connections are made in test loops and in the background loop's thread
            _transports[conn] = (key, seen["transport"], seen["session"])
    return conn


async def park(conn: Any) -> bool:
    """Detach ``conn``'s session for a later loop (True), or leave ``conn`` to be closed (False)."""
    with _lock:
        entry = _transports.pop(conn, None)
    if entry is None or conn.is_closed() or conn.is_in_transaction():
        return False
    key, transport, session_of = entry
    session = session_of()
    with _lock:
        if session is None or len(_parked.get(key, ())) >= _MAX_PARKED_PER_KEY:
            return False
    raw = transport.get_extra_info("socket")
    if raw is None:
        return False
    sock = socket.socket(fileno=os.dup(raw.fileno()))
    sock.setblocking(False)
    # asyncpg's terminate() writes a Terminate message, which would end the session: it is
    # swallowed here, and only asyncpg's descriptor closes; the session lives on in ``sock``.
    transport.write = lambda data: None
    conn.terminate()
    # DISCARD ALL (no prepared statement, setting, temp table, lock or LISTEN is left) is sent
    # now, and its reply read by the loop that takes the session over: no round trip is waited
    # for here, at the end of a test's loop.
    try:
        sock.sendall(_DISCARD)
    except OSError as exc:
        log.debug("isolated_env: DISCARD ALL before parking failed: %r", exc)
        sock.close()
        return False
    global _hooked
    with _lock:
        _forked()
        _parked.setdefault(key, []).append((sock, *session))
        if not _hooked:
            _hooked = True
            atexit.register(close_all)
    return True


def parked() -> int:
    """How many sessions wait to be taken over."""
    with _lock:
        return sum(len(socks) for socks in _parked.values())


def close_all() -> None:
    """End every parked session (session end, exit): the server sees its client leave."""
    with _lock:
        socks = [parked[0] for group in _parked.values() for parked in group]
        _parked.clear()
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.sendall(b"X\x00\x00\x00\x04")  # Terminate, so the server logs no lost client
        sock.close()
