"""isolated_ws(): a real WebSocket server on an ephemeral loopback port, plus a connected client.

The server is the ``websockets`` library's asyncio server (on trio, its protocol over anyio: see
``_ws_anyio``). JSON text messages are dispatched on their ``"type"``; a type without a handler gets
``{"type": "ack", "id": <message id>}``. Handler errors and unexpected messages are recorded in the
background and raised in the test by ``check()`` and on exit.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, cast

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .._errors import ConfigError
from .._resource import resource
from . import _ws_anyio
from ._inprocess import InProcessHandle, Problem, ServerTasks, Slot, preview, serving
from ._tls import RunCA, TlsMixin, run_ca
from ._ws_expectation import WsExpectation

__all__ = ["BinaryHandler", "HandlerReply", "MessageHandler", "WebSocketHandle", "WsExpectation", "isolated_ws"]

HandlerReply: TypeAlias = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
"""What a message handler returns: one reply, several (sent in order; ``[]`` for none), or None
for the default ``{"type": "ack", "id": <message id>}``."""

MessageHandler: TypeAlias = Callable[[dict[str, Any]], HandlerReply | Awaitable[HandlerReply]]
"""Called with each JSON message of its type; sync or async."""

BinaryHandler: TypeAlias = Callable[[bytes], bytes | Awaitable[bytes | None] | None]
"""Called with each binary frame; returns a binary reply or None."""

ANY_TYPE = "*"
# How long the exit waits for handlers still busy with messages that arrived before the clients
# closed; a handler busy past this is cancelled and reported (it would otherwise hang teardown).
_EXIT_GRACE = 2.0
_CLOSE_TIMEOUT = 2.0


def _ack(message: Any) -> dict[str, Any]:
    return {"type": "ack", "id": message.get("id") if isinstance(message, dict) else None}


class WebSocketHandle(TlsMixin, InProcessHandle):
    """A live WebSocket server (``.url``) and a client connected to it (``.client``).

    ``register_message_handler(type, fn)`` sets how the server answers JSON messages of a type;
    ``send_message``/``receive_message`` speak through the client; ``.received`` is everything the
    server got, in order. ``check()`` raises what went wrong in the background (``wait()`` on an
    expectation first if messages are in flight).
    """

    def __init__(self, *, strict: bool, ca: RunCA | None = None) -> None:
        super().__init__("isolated_ws")
        self._ca = ca
        self.url = ""
        self.strict = strict
        self.received: list[Any] = []
        """Everything the server received, in arrival order: dicts (JSON objects), other JSON
        values, ``str`` (text that is not JSON) and ``bytes`` (binary frames)."""
        self.server_connections: list[ServerConnection] = []
        """The server's side of every connection since the last reset (websockets objects: use
        ``.request.path``/``.request.headers``, ``.close_code``, ``await .send(...)``)."""
        self._client: ClientConnection | None = None
        self._clients: list[ClientConnection] = []
        self._tasks: ServerTasks[ServerConnection] = ServerTasks(
            self._problems, "isolated_ws's connection task", gone=(ConnectionClosed,)
        )
        self._handlers: dict[str, MessageHandler] = {}
        self._binary_handler: BinaryHandler | None = None
        self._expectations: list[WsExpectation] = []
        self._server: Server | None = None

    def __repr__(self) -> str:
        return f"<WebSocketHandle {self.url} received={len(self.received)}>"

    # -- the client side -------------------------------------------------------------------------

    @property
    def client(self) -> ClientConnection:
        """The connected ``websockets`` client (``isolated_ws(connect_client=False)`` has none)."""
        if self._client is None:
            raise ConfigError(
                "this isolated_ws was created with connect_client=False, so it has no default client; "
                "use `await ws.connect()` or point your own client at ws.url"
            )
        return self._client

    async def connect(self, path: str = "/", **options: Any) -> ClientConnection:
        """Another client connected to this server (closed on exit); ``options`` go to
        ``websockets.asyncio.client.connect`` (``additional_headers``, ``subprotocols``, ...)."""
        options.setdefault("close_timeout", _CLOSE_TIMEOUT)
        if self._ca is not None:
            options.setdefault("ssl", self._ca.client_context)
        # On trio, a client of the same API over anyio (websockets' own is asyncio-only).
        opener = cast(Any, _ws_anyio.connect) if _ws_anyio.on_trio() else connect
        client: ClientConnection = await opener(self.url.rstrip("/") + "/" + path.lstrip("/"), **options)
        self._clients.append(client)
        return client

    async def send_message(
        self, message: Mapping[str, Any] | str | bytes, *, client: ClientConnection | None = None
    ) -> None:
        """Send from the client (or ``client``): a mapping as JSON text, ``str`` as text, ``bytes``
        as a binary frame."""
        await (client or self.client).send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def receive_message(
        self,
        timeout: float = 5.0,  # noqa: ASYNC109 - the documented API (the original report's)
        *,
        client: ClientConnection | None = None,
    ) -> Any:
        """The next message the client (or ``client``) receives: JSON text decoded (usually a dict),
        other text as ``str``, binary frames as ``bytes``.

        Raises TimeoutError after ``timeout`` seconds, or ResourceCheckFailed (with the cause) if the
        server recorded problems meanwhile, e.g. a handler that raised.
        """
        target = client or self.client
        try:
            with anyio.fail_after(timeout):
                raw = await target.recv()
        except TimeoutError:
            error = self._problems.report(unmet=False)
            if error is not None:
                raise error from None
            raise TimeoutError(
                f"no message arrived within {timeout:g} s; the server has received "
                f"{len(self.received)} message(s): {preview(self.received[-5:])}"
            ) from None
        except ConnectionClosed:
            error = self._problems.report(unmet=False)
            if error is not None:
                raise error from error.__cause__  # the handler's exception, not the close it caused
            raise
        if isinstance(raw, bytes):
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    # -- the server side -------------------------------------------------------------------------

    def register_message_handler(self, type: str, handler: MessageHandler) -> None:
        """Answer JSON messages whose ``"type"`` is ``type`` (``"*"``: every type without its own
        handler, and text that is not a typed JSON object) with ``handler(message)``'s return value:
        a dict, a list of dicts (``[]``: no reply), or None for the default ack."""
        if not isinstance(type, str) or not type:
            raise ConfigError(f"message type must be a non-empty string, got {type!r}")
        if not callable(handler):
            raise ConfigError(f"handler for {type!r} must be callable, got {handler!r}")
        self._handlers[type] = handler

    def register_binary_handler(self, handler: BinaryHandler | None) -> None:
        """Answer binary frames with ``handler(data)`` (bytes or None); ``None`` restores the default,
        which echoes each frame back."""
        self._binary_handler = handler

    def expect(self, type: str, count: int = 1) -> WsExpectation:
        """Require exactly ``count`` messages of ``type`` by the time ``check()`` runs (and on exit);
        ``await ws.expect(...).wait()`` waits for them."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"expect({type!r}, count={count!r}): count must be a whole number >= 0")
        expectation = WsExpectation(self, type, count)
        self._expectations.append(expectation)
        return expectation

    async def broadcast(self, message: Mapping[str, Any] | str | bytes) -> int:
        """Send a server-initiated message to every open connection; returns how many got it."""
        data: str | bytes = message if isinstance(message, (str, bytes)) else json.dumps(message)
        sent = 0
        for side in list(self._tasks.running):
            try:
                await side.peer.send(data)
                sent += 1
            except ConnectionClosed:
                pass  # closed meanwhile: it is simply not among those that got it
        return sent

    async def close_connections(self, code: int = 1000, reason: str = "") -> None:
        """Close every open connection from the server side with ``code`` and ``reason``."""
        for side in list(self._tasks.running):
            await side.peer.close(code, reason)

    def _unmet(self) -> list[Problem]:
        return [
            Problem(f"expected {e.count} {e.type!r} message(s), the server received {len(e.messages)}")
            for e in self._expectations
            if not e.met
        ]

    async def _serve_connection(self, connection: ServerConnection) -> None:
        self.server_connections.append(connection)
        await self._tasks.run(connection, self._serve_side)

    async def _serve_side(self, side: Slot[ServerConnection]) -> None:
        async for raw in side.peer:
            await self._dispatch(side, raw)

    async def _dispatch(self, side: Slot[ServerConnection], raw: str | bytes) -> None:
        connection = side.peer
        if isinstance(raw, bytes):
            self._record(raw)
            with side.doing("binary frame"):
                await self._answer_binary(connection, raw)
            return
        try:
            message: Any = json.loads(raw)
        except ValueError:
            message = raw
        self._record(message)
        if isinstance(message, dict) and isinstance(message.get("type"), str):
            type_: str = message["type"]
            handler = self._handlers.get(type_) or self._handlers.get(ANY_TYPE)
        else:
            type_ = ANY_TYPE
            handler = self._handlers.get(ANY_TYPE)
            if handler is None:
                self._problems.unexpected(
                    f"message {preview(message)}",
                    "not a JSON object with a string 'type' (register a '*' handler to accept it)",
                )
                return
        if handler is None:
            if self.strict and not any(e.type == type_ for e in self._expectations):
                self._problems.unexpected(
                    f"{type_!r} message {preview(message)}",
                    f"strict mode and no handler or expectation for {type_!r}",
                )
                return
            await self._send(connection, [_ack(message)])
            return
        try:
            with side.doing(f"handler for {type_!r}"):
                # The handler gets its own copy: what it mutates must not rewrite .received.
                result = handler(json.loads(raw) if isinstance(message, (dict, list)) else message)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:  # the test's handler: recorded, raised in the test by check()/exit
            self._problems.record(
                f"handler for {type_!r} raised {type(exc).__name__}: {exc} (message: {preview(message)})",
                exc,
            )
            # 1011 makes the client fail at once instead of waiting for a reply that never comes.
            await self._close_quietly(connection, 1011, f"handler for {type_!r} raised {type(exc).__name__}")
            return
        if result is None:
            await self._send(connection, [_ack(message)])
        elif isinstance(result, Mapping):
            await self._send(connection, [result])
        elif isinstance(result, (list, tuple)) and all(isinstance(r, Mapping) for r in result):
            await self._send(connection, list(result))
        else:
            self._problems.record(
                f"handler for {type_!r} returned {preview(result)}; return a dict, a list of dicts or None"
            )

    async def _answer_binary(self, connection: ServerConnection, data: bytes) -> None:
        handler = self._binary_handler
        if handler is None:
            reply: bytes | None = data
        else:
            try:
                result = handler(data)
                reply = await result if inspect.isawaitable(result) else result
            except Exception as exc:  # the test's handler: recorded, raised in the test
                self._problems.record(f"binary handler raised {type(exc).__name__}: {exc}", exc)
                await self._close_quietly(connection, 1011, f"binary handler raised {type(exc).__name__}")
                return
        if reply is None:
            return
        if not isinstance(reply, bytes):
            self._problems.record(f"binary handler returned {preview(reply)}; return bytes or None")
            return
        try:
            await connection.send(reply)
        except ConnectionClosed:
            pass  # the client left; nobody is waiting for this reply

    def _record(self, message: Any) -> None:
        self.received.append(message)
        self._pulse.notify()

    async def _send(self, connection: ServerConnection, replies: Sequence[Mapping[str, Any]]) -> None:
        for reply in replies:
            try:
                text = json.dumps(reply)
            except (TypeError, ValueError) as exc:
                self._problems.record(f"reply {preview(reply)} is not JSON-serialisable: {exc}", exc)
                return
            try:
                await connection.send(text)
            except ConnectionClosed:
                return  # the client left; nobody is waiting for this reply

    @staticmethod
    async def _close_quietly(connection: ServerConnection, code: int, reason: str) -> None:
        try:
            await connection.close(code, reason[:120])
        except ConnectionClosed:
            pass  # already closed, which is what we wanted

    # -- lifecycle -------------------------------------------------------------------------------

    def _bind(self, server: Server) -> None:
        self._server = server
        scheme = "wss" if self._ca is not None else "ws"
        self.url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        self._problems.what = f"isolated_ws at {self.url}"

    async def _close_connections(self, *, final: bool) -> None:
        """Close every connection (ours first, then any other client's from the server side), let
        the handlers finish the messages that arrived before, within a grace; a handler still busy
        after it is cancelled and reported."""
        clients, self._clients = self._clients, []
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(client.close)
        async with anyio.create_task_group() as tg:
            for side in list(self._tasks.running):
                tg.start_soon(self._close_quietly, side.peer, 1001, "test finished")
        await self._tasks.stop(_EXIT_GRACE, final=final)

    async def _aclose(self) -> None:
        try:
            await self._close_connections(final=True)
        finally:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

    async def _reset(self) -> None:
        """Pristine for the next Hypothesis example: clients reconnected, recorded messages and
        expectations cleared (problems are kept for the final exit), handlers kept."""
        had_default = self._client is not None
        path = self._client.request.path if self._client is not None and self._client.request else "/"
        await self._close_connections(final=False)
        self._problems.reset()
        self.received.clear()
        self.server_connections.clear()
        self._expectations.clear()
        self._client = None
        if had_default:
            self._client = await self.connect(path)


@resource("ws", aliases=("websocket",), reset=lambda handle: handle._reset())
async def isolated_ws(
    *, path: str = "/", strict: bool = False, connect_client: bool = True, tls: bool = False
) -> AsyncIterator[WebSocketHandle]:
    """A WebSocket server on ``ws://127.0.0.1:<free port>`` and a client connected to ``path``.

    ``strict=True`` records a message whose type has neither a handler nor an expectation as a
    problem (instead of acknowledging it). ``connect_client=False`` skips the default client, for
    tests where the code under test is the client. ``tls=True`` serves ``wss://`` with a
    certificate of the run's test CA (``.ca_path``, ``.ssl_context``, ``.env``), which the clients trust.
    """
    if not path.startswith("/"):
        raise ConfigError(f"isolated_ws(path={path!r}): the path must start with '/'")
    handle = WebSocketHandle(strict=strict, ca=await run_ca() if tls else None)
    context = handle._ca.server_context() if handle._ca is not None else None
    if _ws_anyio.on_trio():  # websockets' server is asyncio-only: its protocol over anyio instead
        server = await _ws_anyio.Server.start(cast(Any, handle._serve_connection), _CLOSE_TIMEOUT, context)
        handle._bind(cast(Any, server))
    else:
        handle._bind(await serve(handle._serve_connection, "127.0.0.1", 0, close_timeout=_CLOSE_TIMEOUT, ssl=context))
    async with serving(handle._problems, handle._aclose):
        if connect_client:
            handle._client = await handle.connect(path)
        yield handle
