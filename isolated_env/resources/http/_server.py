"""A small HTTP/1.1 server: anyio sockets for I/O (so it serves on asyncio and trio alike), h11 for
the protocol (no parsing of our own).

Each connection is served by its own task (one of the shared :class:`ServerTasks`), so a slow
response never holds up another request, and what fails in one is recorded in the problem log. What
to answer is decided by an ``app`` coroutine that turns a :class:`RecordedRequest` into a
:class:`Reply`; the server only executes it (including the faults a reply asks for).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import unquote

import anyio
import anyio.abc
import h11
import httpx
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream

from .._inprocess import Acceptor, ProblemLog, ServerTasks, Slot

__all__ = ["TEXT", "H11Server", "RecordedRequest", "Reply"]

_READ_SIZE = 65536
TEXT = "text/plain; charset=utf-8"


@dataclasses.dataclass(frozen=True, eq=False)
class RecordedRequest:
    """One request as the server received it (headers and query as httpx's own types)."""

    method: str
    target: str
    """The raw request target, e.g. ``/users/1?active=true``."""
    path: str
    """The percent-decoded path, e.g. ``/users/1``."""
    query: httpx.QueryParams
    headers: httpx.Headers
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.target} ({len(self.body)} byte body)>"


@dataclasses.dataclass(frozen=True)
class Reply:
    """What to send back, and how: a delay is the app's business, the rest is the server's."""

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | AsyncIterable[bytes] = b""
    drop: Literal["close", "reset"] | None = None
    """Close the connection (or reset it) instead of answering."""
    chunk_size: int | None = None
    chunk_interval: float = 0.0
    """With ``chunk_size``: send the body that many bytes at a time, pausing between chunks."""

    @classmethod
    def text(cls, status: int, message: str) -> Reply:
        return cls(status=status, headers=(("content-type", TEXT),), body=message.encode())


App = Callable[[RecordedRequest], Awaitable[Reply]]
Stream = anyio.abc.ByteStream  # a socket stream, or TLS over one


class H11Server:
    """Serves ``app`` on 127.0.0.1 at an ephemeral port until :meth:`aclose`; what goes wrong in a
    connection (a malformed request, a failure of ours) is recorded in ``problems``."""

    def __init__(self, app: App, problems: ProblemLog) -> None:
        self.ssl_context: ssl.SSLContext | None = None
        """Set: every connection speaks TLS with this context (read per connection, so a
        certificate for a newly routed host applies to the next one)."""
        self._app = app
        self._problems = problems
        self._tasks: ServerTasks[Stream] = ServerTasks(
            problems, "the test HTTP server", gone=(ConnectionError, OSError, anyio.BrokenResourceError)
        )
        self._acceptor = Acceptor(self._connection, name="isolated-http", on_error=self._failed,
                                  on_accept_failure=self._accept_failed)
        self.port = 0

    async def start(self) -> int:
        listener = await self._acceptor.start()
        self.port = listener.extra(SocketAttribute.local_port)
        return self.port

    async def aclose(self) -> None:
        """Stop listening, end every connection (cancelling responses still in progress)."""
        await self._acceptor.stop()
        await self._tasks.stop()
        await self._acceptor.drain()

    async def drop_connections(self) -> None:
        """End every open connection but keep listening (a pooled server handed to the next test)."""
        await self._tasks.stop(final=False)

    def _failed(self, exc: BaseException) -> None:
        self._problems.record(f"the test HTTP server failed: {exc!r}", exc)

    def _accept_failed(self, exc: OSError) -> None:
        self._problems.record(f"the test HTTP server stopped accepting connections: {exc!r}", exc)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        await self._tasks.run(stream, self._serve)

    async def _serve(self, slot: Slot[Stream]) -> None:
        stream = slot.peer
        try:
            if self.ssl_context is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=self.ssl_context, standard_compatible=False
                    )
                except ssl.SSLError as exc:
                    self._problems.record(
                        f"a TLS handshake failed ({exc.reason or exc}): does the client trust the test CA? "
                        "Give it verify=http.ssl_context (httpx), ssl=http.ssl_context (aiohttp) or "
                        "http.env (a subprocess)"
                    )
                    return
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return  # the client left during the handshake
            await self._exchange(stream)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (ConnectionError, OSError, anyio.BrokenResourceError):
                    pass  # the client reset the connection first: it is closed either way

    async def _exchange(self, stream: Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                reply = await self._app(request)
                if reply.drop is not None:
                    if reply.drop == "reset":
                        _reset_on_close(stream)
                    return
                await self._send(conn, stream, request, reply)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    return
        except h11.RemoteProtocolError as exc:
            self._problems.record(f"malformed request: {exc}")
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await stream.send(conn.send(h11.Response(status_code=exc.error_status_hint, headers=[])))
                    await stream.send(conn.send(h11.EndOfMessage()))
                except h11.LocalProtocolError:
                    pass  # h11 cannot phrase the error reply; the problem is recorded, the close follows

    async def _read_request(self, conn: h11.Connection, stream: Stream) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if head is not None and conn.they_are_waiting_for_100_continue:
                    await stream.send(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                try:
                    data = await stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    data = b""  # h11's word for the peer closing its side
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _record(head, bytes(body), stream, "https" if self.ssl_context else "http")
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(
        self, conn: h11.Connection, stream: Stream, request: RecordedRequest, reply: Reply
    ) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        names = {k.lower() for k, _ in headers}
        no_body = request.method == "HEAD" or reply.status in (204, 304) or reply.status < 200
        no_length = reply.status in (204, 304) or reply.status < 200
        if isinstance(reply.body, bytes) and b"content-length" not in names and not no_length:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        try:
            head = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status)))
            if isinstance(reply.body, bytes) and reply.chunk_size is None:
                # A whole answer goes out in one write: one syscall, and the client wakes up once.
                body = conn.send(h11.Data(data=reply.body)) if reply.body and not no_body else b""
                await stream.send(head + body + conn.send(h11.EndOfMessage()))
                return
            await stream.send(head)
            if not no_body:
                await self._send_body(conn, stream, reply)
            await stream.send(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            self._problems.record(f"could not send the response to {request.method} {request.target}: {exc}", exc)
            _reset_on_close(stream)
            raise ConnectionAbortedError from exc

    async def _send_body(self, conn: h11.Connection, stream: Stream, reply: Reply) -> None:
        if isinstance(reply.body, bytes):
            if reply.chunk_size is None:
                if reply.body:
                    await stream.send(conn.send(h11.Data(data=reply.body)))
                return
            step = reply.chunk_size
            for start in range(0, len(reply.body), step):
                if start:
                    await anyio.sleep(reply.chunk_interval)
                await stream.send(conn.send(h11.Data(data=reply.body[start : start + step])))
            return
        async for chunk in reply.body:
            if chunk:
                await stream.send(conn.send(h11.Data(data=chunk)))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _reset_on_close(stream: Stream) -> None:
    """Make the coming close reset the connection (RST) instead of ending it in order (FIN)."""
    stream.extra(SocketAttribute.raw_socket).setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _record(head: h11.Request, body: bytes, stream: Stream, scheme: str) -> RecordedRequest:
    target = head.target.decode("latin-1")
    raw_path, _, query = target.partition("?")
    headers = httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers])
    host = headers.get("host") or f"127.0.0.1:{stream.extra(SocketAttribute.local_port)}"
    return RecordedRequest(
        method=head.method.decode("ascii"),
        target=target,
        path=unquote(raw_path),
        query=httpx.QueryParams(query),
        headers=headers,
        body=body,
        url=f"{scheme}://{host}{target}",
    )
