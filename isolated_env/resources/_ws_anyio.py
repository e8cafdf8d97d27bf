"""WebSocket over anyio sockets, for ``isolated_ws`` on trio.

websockets' server and client run on asyncio only. On trio the handle uses these instead: websockets'
own sans-I/O protocol (``ServerProtocol``/``ClientProtocol``: handshake, framing, pings, the close
handshake) driven over anyio streams, so nothing of the protocol is ours. :class:`Connection` offers
the part of websockets' connection API the handle and a test use: ``send``, ``recv``, ``async for``,
``close(code, reason)``, ``request``, ``close_code``/``close_reason``; closed connections raise
websockets' own ``ConnectionClosedOK``/``ConnectionClosedError``. Each connection's reader and each
server connection run in the loop's runtime task group. On asyncio the handle keeps websockets' own.
"""

from __future__ import annotations

import collections
import ssl as ssl_module
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from .._errors import ConfigError
from .._runtime import current_runtime
from ._inprocess import Acceptor

__all__ = ["Connection", "Server", "connect", "on_trio"]

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_STOP_WAIT_S = 5.0


def on_trio() -> bool:
    """Whether the running event loop is trio's."""
    if "trio" not in sys.modules:
        return False
    import trio

    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


class Connection:
    """One WebSocket connection (either side) over an anyio stream."""

    def __init__(self, stream: anyio.abc.ByteStream, protocol: Protocol, request: Any, close_timeout: float) -> None:
        self._stream = stream
        self._protocol = protocol
        self.request = request
        """The opening handshake's request (``.path``, ``.headers``)."""
        self._close_timeout = close_timeout
        self._lock = anyio.Lock()
        self._messages: collections.deque[Any] = collections.deque()
        self._arrived = anyio.Event()  # replaced after each arrival; waiters keep the one they wait on
        self._ended = False
        self._reading = anyio.CancelScope()
        self._done = anyio.Event()
        self._parts: list[bytes] = []
        self._text = False

    @property
    def close_code(self) -> int | None:
        return self._protocol.close_code

    @property
    def close_reason(self) -> str | None:
        return self._protocol.close_reason

    async def send(self, message: str | bytes) -> None:
        async with self._lock:
            if self._protocol.state is not State.OPEN:
                raise self._protocol.close_exc
            if isinstance(message, str):
                self._protocol.send_text(message.encode())
            else:
                self._protocol.send_binary(bytes(message))
            try:
                await self._flush()
            except _GONE as exc:
                raise ConnectionClosedError(None, None) from exc

    async def recv(self) -> Any:
        """The next message: ``str`` for a text message, ``bytes`` for a binary one."""
        while not self._messages:
            if self._ended:
                raise self._protocol.close_exc
            await self._arrived.wait()
        return self._messages.popleft()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedOK:
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake (bounded by the close timeout), then the TCP connection."""
        async with self._lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code, reason)
                try:
                    await self._flush()
                except _GONE:
                    pass  # the peer is gone: there is nobody to say goodbye to
        with anyio.move_on_after(self._close_timeout):
            await self._done.wait()
        self._reading.cancel()
        with anyio.move_on_after(_STOP_WAIT_S):
            await self._done.wait()

    async def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                await self._stream.send(data)
            elif isinstance(self._stream, TLSStream):
                # TLS cannot half-close: end the connection, as websockets' own does over TLS (the
                # reader sees it closed and finishes)
                await self._stream.aclose()
            else:  # the protocol's word for "half-close the TCP connection"
                await self._stream.send_eof()

    def _take(self, events: Sequence[Any]) -> None:
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._text, self._parts = event.opcode is Opcode.TEXT, []
            elif event.opcode is not Opcode.CONT:
                continue  # ping, pong and close: the protocol answers them
            self._parts.append(bytes(event.data))
            if event.fin:
                data = b"".join(self._parts)
                self._messages.append(data.decode() if self._text else data)
                self._wake()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def _read(self) -> None:
        try:
            with self._reading:
                while self._protocol.state is not State.CLOSED:
                    try:
                        data = await self._stream.receive()
                    except _GONE:
                        self._protocol.receive_eof()
                        data = b""
                    else:
                        self._protocol.receive_data(data)
                    self._take(self._protocol.events_received())
                    async with self._lock:
                        try:
                            await self._flush()
                        except _GONE:
                            break
                    if not data:
                        break
        finally:
            self._ended = True
            self._wake()
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self._done.set()


async def _handshake(stream: anyio.abc.ByteStream, protocol: Protocol) -> list[Any]:
    """Read until the protocol has the other side's handshake; the events so far."""
    while True:
        try:
            data = await stream.receive()
        except anyio.EndOfStream:
            protocol.receive_eof()
        else:
            protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            return events


async def connect(
    url: str,
    *,
    close_timeout: float = 10.0,
    additional_headers: Mapping[str, str] | None = None,
    subprotocols: Sequence[Any] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    **options: Any,
) -> Connection:
    """A client connected to ``url`` (what ``isolated_ws``'s ``connect()`` gives on trio)."""
    if options:
        raise ConfigError(
            f"isolated_ws on trio supports the connect options additional_headers, subprotocols, ssl "
            f"and close_timeout, not {', '.join(sorted(options))}; run the test on asyncio for the others"
        )
    uri = parse_uri(url)
    protocol = ClientProtocol(uri, subprotocols=subprotocols)
    request = protocol.connect()
    for name, value in (additional_headers or {}).items():
        request.headers[name] = value
    protocol.send_request(request)
    stream: anyio.abc.ByteStream
    if uri.secure:
        stream = await anyio.connect_tcp(uri.host, uri.port, tls=True, ssl_context=ssl, tls_standard_compatible=False)
    else:
        stream = await anyio.connect_tcp(uri.host, uri.port)
    connection = Connection(stream, protocol, request, close_timeout)
    try:
        await connection._flush()
        events = await _handshake(stream, protocol)
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
    except BaseException:
        await stream.aclose()
        raise
    connection._take(events[1:])
    await (await current_runtime()).spawn(connection._read, name="isolated-ws-client", daemon=True)
    return connection


class Server:
    """Accepts connections on 127.0.0.1 and runs ``handler(connection)`` for each, closing the
    connection when the handler returns (as websockets' server does)."""

    def __init__(
        self,
        handler: Callable[[Connection], Awaitable[None]],
        close_timeout: float,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> None:
        self._handler = handler
        self._ssl_context = ssl_context
        self._close_timeout = close_timeout
        self._acceptor = Acceptor(self._serve, name="isolated-ws")
        self.sockets: list[Any] = []

    @classmethod
    async def start(
        cls,
        handler: Callable[[Connection], Awaitable[None]],
        close_timeout: float,
        ssl_context: ssl_module.SSLContext | None = None,
    ) -> Server:
        server = cls(handler, close_timeout, ssl_context)
        listener = await server._acceptor.start()
        server.sockets = [listener.extra(SocketAttribute.raw_socket)]
        return server

    def close(self) -> None:
        self._acceptor.stop_accepting()

    async def wait_closed(self) -> None:
        await self._acceptor.stop()
        await self._acceptor.drain()

    async def _serve(self, socket_stream: anyio.abc.SocketStream) -> None:
        protocol = ServerProtocol()
        stream: anyio.abc.ByteStream = socket_stream
        try:
            if self._ssl_context is not None:
                stream = await TLSStream.wrap(
                    socket_stream, server_side=True, ssl_context=self._ssl_context, standard_compatible=False
                )
            events = await _handshake(stream, protocol)
        except _GONE:
            await stream.aclose()
            return
        request = events[0]
        protocol.send_response(protocol.accept(request))
        connection = Connection(stream, protocol, request, self._close_timeout)
        if protocol.state is not State.OPEN:  # a bad handshake: answered with an HTTP error
            with anyio.CancelScope(shield=True):
                try:
                    await connection._flush()
                except _GONE:
                    pass  # the client left first
                await stream.aclose()
            return
        connection._take(events[1:])

        async def answer_then_read() -> None:
            try:
                await connection._flush()
            except _GONE:
                pass  # the client left already: the reader sees it and ends
            await connection._read()

        # The handshake's answer goes out from the reader's task, which starts once the handler
        # has registered the connection (before its first wait): a client that is told "open"
        # is already among the server's connections.
        await self._acceptor.runtime.spawn(answer_then_read, name="isolated-ws-reader", daemon=True)
        try:
            await self._handler(connection)
        finally:
            with anyio.CancelScope(shield=True):
                await connection.close()
