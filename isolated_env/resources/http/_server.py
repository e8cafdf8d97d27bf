"""A small HTTP/1.1 server: asyncio streams for I/O, h11 for the protocol (no parsing of our own).

Each connection is served by its own task (one of the shared :class:`ServerTasks`), so a slow
response never holds up another request, and what fails in one is recorded in the problem log. What
to answer is decided by an ``app`` coroutine that turns a :class:`RecordedRequest` into a
:class:`Reply`; the server only executes it (including the faults a reply asks for).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import socket
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import unquote

import anyio
import h11
import httpx

from .._inprocess import ProblemLog, ServerTasks, Slot

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


class H11Server:
    """Serves ``app`` on 127.0.0.1 at an ephemeral port until :meth:`aclose`; what goes wrong in a
    connection (a malformed request, a failure of ours) is recorded in ``problems``."""

    def __init__(self, app: App, problems: ProblemLog) -> None:
        self._app = app
        self._problems = problems
        self._listener: socket.socket | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._tasks: ServerTasks[asyncio.StreamWriter] = ServerTasks(
            problems, "the test HTTP server", gone=(ConnectionError, OSError)
        )
        self.port = 0

    async def start(self) -> int:
        # Accepting ourselves rather than through asyncio.start_server: on Python 3.11 a connection
        # accepted in the loop iteration before Server.close() never reaches the callback, and its
        # socket stays open until garbage collection. Here every accepted socket gets its task.
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        asyncio.get_running_loop().add_reader(listener, self._accept, listener)
        self._listener = listener
        self.port = listener.getsockname()[1]
        return self.port

    async def aclose(self) -> None:
        """Stop listening, end every connection (cancelling responses still in progress)."""
        self._stop_listening()
        await self._tasks.stop()
        if self._connections:  # including those accepted just now, which see the stop and close
            await asyncio.wait(set(self._connections))

    def _stop_listening(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        """The listening socket is readable: take every pending connection."""
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left for now
            except ConnectionAbortedError:
                continue  # the client gave up before we took it: nothing to serve
            except OSError as exc:  # out of file descriptors, say: stop, and say why in the test
                self._problems.record(f"the test HTTP server stopped accepting connections: {exc!r}", exc)
                self._stop_listening()
                return
            task = asyncio.get_running_loop().create_task(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _connection(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()  # the client left before its streams were set up: nothing to serve
            return
        await self._tasks.run(writer, functools.partial(self._serve, reader))

    async def _serve(self, reader: asyncio.StreamReader, slot: Slot[asyncio.StreamWriter]) -> None:
        writer = slot.peer
        try:
            await self._exchange(reader, writer)
        finally:
            writer.close()
            with anyio.CancelScope(shield=True):
                try:
                    await writer.wait_closed()
                except (ConnectionError, OSError):
                    pass  # the client reset the connection first: it is closed either way

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(conn, reader, writer)
                if request is None:
                    return
                reply = await self._app(request)
                if reply.drop is not None:
                    if reply.drop == "reset":
                        writer.transport.abort()
                    return
                await self._send(conn, writer, request, reply)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    return
        except h11.RemoteProtocolError as exc:
            self._problems.record(f"malformed request: {exc}")
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    writer.write(conn.send(h11.Response(status_code=exc.error_status_hint, headers=[])))
                    writer.write(conn.send(h11.EndOfMessage()))
                except h11.LocalProtocolError:
                    pass  # h11 cannot phrase the error reply; the problem is recorded, the close follows

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if head is not None and conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                conn.receive_data(await reader.read(_READ_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _record(head, bytes(body), writer)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: RecordedRequest, reply: Reply
    ) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        names = {k.lower() for k, _ in headers}
        no_body = request.method == "HEAD" or reply.status in (204, 304) or reply.status < 200
        no_length = reply.status in (204, 304) or reply.status < 200
        if isinstance(reply.body, bytes) and b"content-length" not in names and not no_length:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        try:
            writer.write(
                conn.send(
                    h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
                )
            )
            if not no_body:
                await self._send_body(conn, writer, reply)
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except h11.LocalProtocolError as exc:
            self._problems.record(f"could not send the response to {request.method} {request.target}: {exc}", exc)
            writer.transport.abort()
            raise ConnectionAbortedError from exc

    async def _send_body(self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply) -> None:
        if isinstance(reply.body, bytes):
            if reply.chunk_size is None:
                if reply.body:
                    writer.write(conn.send(h11.Data(data=reply.body)))
                return
            step = reply.chunk_size
            for start in range(0, len(reply.body), step):
                if start:
                    await anyio.sleep(reply.chunk_interval)
                writer.write(conn.send(h11.Data(data=reply.body[start : start + step])))
                await writer.drain()
            return
        async for chunk in reply.body:
            if chunk:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _record(head: h11.Request, body: bytes, writer: asyncio.StreamWriter) -> RecordedRequest:
    target = head.target.decode("latin-1")
    raw_path, _, query = target.partition("?")
    headers = httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers])
    host = headers.get("host") or "127.0.0.1:{}".format(writer.get_extra_info("sockname")[1])
    return RecordedRequest(
        method=head.method.decode("ascii"),
        target=target,
        path=unquote(raw_path),
        query=httpx.QueryParams(query),
        headers=headers,
        body=body,
        url=f"http://{host}{target}",
    )
