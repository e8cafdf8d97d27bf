"""The adaptor's ASGI app and its uvicorn server.

Run as ``python -m isolated_env._servers.chdb --path DIR --fd N --password-file FILE``: it serves
the listening socket ``N`` (bound to loopback by the parent) with uvicorn and :class:`Adaptor`,
and executes every request with the engine from chdb, so unmodified ``clickhouse-connect``
clients (sync and async) talk to it over HTTP exactly as to a real server. ``/ping`` and
``/replicas_status`` answer ``Ok.``; any other path but ``/`` is ``Code: 48 NOT_IMPLEMENTED``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import secrets
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import compression, reply
from .engine import Engine
from .protocol import EngineError, Outcome, Stream, authenticate, check_client, decode_request, parse_params

__all__ = ["Adaptor", "EngineError", "main"]

_log = logging.getLogger("isolated_env")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Adaptor:
    """The ASGI app: authentication, request decoding and reply headers around :class:`Engine`."""

    def __init__(self, engine: Engine, password: str, *, threads: int = 32) -> None:
        self.engine = engine
        self._password = password.encode()
        self._limiter: anyio.CapacityLimiter | None = None
        self._threads = threads
        self.display_name = socket.gethostname()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        params = parse_params(scope.get("query_string", b""))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            self._check_client(scope)
            path = scope["path"]
            if path in ("/ping", "/replicas_status") or (
                path == "/" and scope["method"] in ("GET", "HEAD") and "query" not in params
            ):
                await self._reply(send, 200, b"Ok.\n", [("content-type", "text/plain; charset=UTF-8")])
                return
            if path != "/":
                raise EngineError.of(
                    48, "NOT_IMPLEMENTED", f"There is no handle {path} (the chdb adaptor serves / only)"
                )
            user = authenticate(headers, params, self._password)
            encoding = compression.response_encoding(headers, params)
            level = self._compression_level(params) if encoding else 0
            body = await self._read_body(receive)
            limiter = self._limiter or anyio.CapacityLimiter(self._threads)
            self._limiter = limiter
            # Decoding (decompression, finding the data of an INSERT) and the engine call run in a
            # worker thread: the event loop only moves bytes.
            outcome = await anyio.to_thread.run_sync(
                self._execute, scope["method"], headers, params, body, user, limiter=limiter
            )
        except EngineError as err:
            await self._error(send, err, query_id)
            return
        except Exception as exc:  # reported to the client as a ClickHouse error, as a server would
            _log.warning("chdb adaptor: query %s failed unexpectedly", query_id, exc_info=True)
            failure = EngineError.of(1001, "STD_EXCEPTION", f"{type(exc).__name__}: {exc}")
            await self._error(send, failure, query_id)
            return
        tag = secrets.token_hex(8).upper()
        reply_headers = self._common_headers(query_id) + reply.success_headers(outcome, tag)
        if encoding:
            reply_headers.append(("content-encoding", encoding))
        if outcome.rest is not None:
            await self._stream(send, outcome.rest, reply_headers, encoding, level, tag)
            return
        payload = outcome.body
        if encoding and payload:
            payload = await anyio.to_thread.run_sync(compression.compress, payload, encoding, level)
        await self._reply(send, 200, payload, reply_headers)

    async def _stream(
        self, send: Send, rest: Stream, headers: list[tuple[str, str]], encoding: str | None, level: int, tag: str
    ) -> None:
        """A result still being produced: chunked, each chunk as the engine gives it; a failure after
        the first is written as the exception block that clients look for after the reply's tag."""
        packer = compression.compressor(encoding, level) if encoding else None
        limiter = self._limiter
        try:
            await send({"type": "http.response.start", "status": 200, "headers": reply.encode_headers(headers, None)})
            while True:
                try:
                    chunk = await anyio.to_thread.run_sync(rest, limiter=limiter)
                except EngineError as err:
                    chunk, last = reply.exception_block(err, self.engine.version, tag), True
                else:
                    last = not chunk
                if packer is not None:
                    chunk = packer.compress(chunk) + (packer.flush() if last else b"")
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(rest.close, limiter=limiter)
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await anyio.to_thread.run_sync(self.engine.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def _compression_level(params: Mapping[str, str]) -> int:
        try:
            return compression.compression_level(params)
        except ValueError as exc:
            raise EngineError.of(36, "BAD_ARGUMENTS", str(exc)) from None

    @staticmethod
    def _check_client(scope: Scope) -> None:
        client = scope.get("client")
        check_client(client[0] if client else None)

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _execute(
        self, method: str, headers: Mapping[str, str], params: Mapping[str, str], body: bytes, user: str
    ) -> Outcome:
        query = decode_request(method, headers, params, body)
        return self.engine.execute(dataclasses.replace(query, user=user) if user != query.user else query)

    def _common_headers(self, query_id: str) -> list[tuple[str, str]]:
        return reply.common_headers(self.display_name, query_id, self.engine.timezone)

    async def _error(self, send: Send, err: EngineError, query_id: str) -> None:
        status, body, headers = reply.error_reply(err, self.engine.version)
        await self._reply(send, status, body, self._common_headers(query_id) + headers)

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        raw = reply.encode_headers(headers, len(body))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _start_engine(path: Path) -> Engine:
    """The engine, started in a thread while this one imports uvicorn: chdb's start runs in C++
    with the GIL released, so the two overlap (a good part of the adaptor's cold start)."""
    import threading

    started: dict[str, Any] = {}

    def start() -> None:
        try:
            started["engine"] = Engine(path)
        except BaseException as exc:  # re-raised in the main thread
            started["error"] = exc

    thread = threading.Thread(target=start, name="isolated-env chdb start")
    thread.start()
    import uvicorn  # noqa: F401  (imported while the engine starts)

    thread.join()
    if "error" in started:
        raise started["error"]
    engine: Engine = started["engine"]
    return engine


def main(argv: list[str] | None = None) -> None:
    """Serve the engine at ``--path`` on the inherited listening socket ``--fd``."""
    parser = argparse.ArgumentParser(prog="python -m isolated_env._servers.chdb")
    parser.add_argument("--path", required=True, type=Path, help="the engine's data directory")
    parser.add_argument("--fd", required=True, type=int, help="an inherited listening socket on loopback")
    parser.add_argument("--password-file", required=True, type=Path, help="a 0600 file holding the password")
    parser.add_argument("--threads", type=int, default=32, help="engine calls running at once")
    args = parser.parse_args(argv)
    password = args.password_file.read_text().strip()
    sock = socket.socket(fileno=args.fd)
    engine = _start_engine(args.path)
    import uvicorn

    app = Adaptor(engine, password, threads=args.threads)
    # httptools (the clickhouse extra) parses requests in C, h11 in pure Python: the parser is a
    # good part of a small request's cost here.
    http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    config = uvicorn.Config(
        app, http=http, lifespan="on", log_level="warning", access_log=False, server_header=False,
        date_header=False, timeout_keep_alive=30, ws="none",
    )
    print(f"chdb adaptor: ClickHouse {engine.version} at {args.path}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
