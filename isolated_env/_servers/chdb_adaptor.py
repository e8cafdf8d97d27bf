"""The chdb HTTP adaptor: the ClickHouse engine from ``chdb`` served over the ClickHouse HTTP interface.

Run as ``python -m isolated_env._servers.chdb_adaptor --path DIR --fd N --password-file FILE``: it
serves the listening socket ``N`` (bound to loopback by the parent) with uvicorn and a small ASGI
app, and executes every request with the engine from chdb, so unmodified ``clickhouse-connect``
clients (sync and async) talk to it over HTTP exactly as to a real server.

What a request can carry, as on a real server: the query in the ``query`` parameter, the body or
both (the body is appended after a newline); ``INSERT ... FORMAT <fmt>`` followed by data; the
``database``, ``default_format``, ``query_id``, ``session_id``/``session_timeout``/``session_check``
parameters; multipart forms and external data; ``param_<name>`` values for ``{name:Type}``
placeholders; any query setting as a parameter; gzip/deflate/lz4/zstd request bodies
(``Content-Encoding``) and responses (``enable_http_compression=1`` + ``Accept-Encoding``). Replies
carry ``X-ClickHouse-Query-Id``, ``-Format``, ``-Timezone``, ``-Summary`` and, on failure,
``-Exception-Code`` with the engine's own ``Code: N. DB::Exception: ...`` text in the body.

What chdb told us (measured, chdb 4.4): any number of connections may be open on the one engine
path of a process, each with its own current database and settings; opening one costs ~0.1 ms
(settings can ride in its connection string); queries on different connections run in parallel
and release the GIL; the engine stops when its last connection closes, so a keeper connection
stays open for the adaptor's life; ``send_insert`` feeds raw ``FORMAT`` bytes (Native included).
So a request without a session runs on a fresh connection in a worker thread, and a session is a
connection kept between requests.

Multipart requests (form-encoded queries, which clickhouse-connect uses for long parameter values,
and external data tables) are read with the standard library's MIME parser. Not supported
(answered with ``Code: 48 NOT_IMPLEMENTED``): ClickHouse's own block compression
(``compress``/``decompress=1``), which clickhouse-connect does not use.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import gzip
import hmac
import ipaddress
import json
import re
import socket
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread

__all__ = ["Adaptor", "Engine", "EngineError", "ExternalTable", "Query", "main", "parse_form", "split_insert"]

USER = "default"
"""The only user the adaptor knows; its password is generated per server."""

# Parameters the HTTP layer consumes itself; every other parameter is a query setting.
_HTTP_PARAMS = frozenset(
    {
        "query", "database", "default_format", "query_id", "user", "password", "quota_key",
        "session_id", "session_timeout", "session_check", "compress", "decompress", "buffer_size",
        "wait_end_of_query", "client_protocol_version", "role", "stacktrace", "add_http_cors_header",
        "enable_http_compression", "http_zlib_compression_level", "send_progress_in_http_headers",
        "http_headers_progress_interval_ms", "cancel_http_readonly_queries_on_client_close",
        "http_response_buffer_size", "http_wait_end_of_query",
        "http_native_compression_disable_checksumming_on_decompress",
    }
)
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]*$")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_MULTI_STATEMENT_HINT = re.compile(r";\s*\S")
# Tokens of the head of an INSERT: enough to find ``FORMAT <name>`` outside quotes and comments.
_TOKEN = re.compile(
    rb"""\s+|--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*|.""",
    re.DOTALL,
)
_MAX_HEAD = 256 * 1024  # ClickHouse's max_query_size: the INSERT head is looked for only this far

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}
_BINARY_FORMATS = (
    "Native", "RowBinary", "Arrow", "Parquet", "ORC", "Avro", "Protobuf", "MsgPack", "CapnProto",
)

# exceptionCodeToHTTPStatus of ClickHouse's HTTP handler (the codes a test is likely to meet).
_STATUS_BY_CODE = {
    194: 401,
    **dict.fromkeys((192, 193, 195, 516), 403),
    **dict.fromkeys((6, 15, 25, 26, 27, 36, 38, 41, 44, 53, 62, 72, 117, 321, 376), 400),
    **dict.fromkeys((46, 47, 50, 56, 60, 63, 73, 78, 81, 115, 336), 404),
    175: 413,
    48: 501,
    159: 408,
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class EngineError(Exception):
    """A ClickHouse exception: ``code`` and the server's message text (``Code: N. DB::Exception: ...``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, code: int, name: str, text: str) -> EngineError:
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> EngineError:
        text = str(exc).strip()
        start = text.find("Code: ")
        if start > 0:
            text = text[start:]
        match = re.match(r"Code: (\d+)\.", text)
        if match is None:
            return cls(1001, f"Code: 1001. DB::Exception: {text}")
        return cls(int(match.group(1)), text)


@dataclasses.dataclass(frozen=True)
class Query:
    """One request, decoded: what to run and how."""

    sql: str  # the statement (for an INSERT with data: its head, without FORMAT)
    insert_format: str | None  # set when ``data`` is to be fed to the INSERT in this format
    data: bytes
    params: Mapping[str, str]  # {name:Type} values
    settings: Mapping[str, str]
    database: str | None
    default_format: str
    session_id: str | None
    session_timeout: float
    session_check: bool
    external: tuple[ExternalTable, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExternalTable:
    """A file of a multipart request, queried as a temporary table named after its field."""

    name: str
    structure: str
    format: str
    data: bytes


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """The text fields and the files of a ``multipart/form-data`` body (the stdlib MIME parser)."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise EngineError.of(36, "BAD_ARGUMENTS", "a multipart request without parts")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if part.get_filename() is None:
            fields[name] = payload.decode()
        else:
            files.append((name, payload))
    return fields, files


@dataclasses.dataclass(frozen=True)
class Outcome:
    body: bytes
    format: str
    summary: Mapping[str, str]


def split_insert(text: bytes) -> tuple[bytes, str, bytes] | None:
    """``(head, format, data)`` when ``text`` is ``INSERT ... FORMAT <fmt>`` followed by data.

    The data starts after the format name, its horizontal whitespace and at most one newline
    (ClickHouse's own rule), so binary data that begins with whitespace bytes is kept intact.
    """
    pos = 0
    first = True
    limit = min(len(text), _MAX_HEAD)
    while pos < limit:
        match = _TOKEN.match(text, pos)
        if match is None:  # pragma: no cover - the pattern matches any byte
            return None
        token = match.group()
        word = token.upper() if token[:1].isalpha() or token[:1] == b"_" else b""
        if first and word:
            if word != b"INSERT":
                return None
            first = False
        elif first and not token.isspace() and not token.startswith((b"--", b"/*")):
            return None
        elif word in (b"VALUES", b"SELECT", b"WITH"):
            return None
        elif word == b"FORMAT":
            name = re.compile(rb"\s+([A-Za-z0-9_]+)").match(text, match.end())
            if name is None:
                return None
            data_start = name.end()
            while data_start < len(text) and text[data_start] in b" \t\f":
                data_start += 1
            if text[data_start : data_start + 1] == b"\r":
                data_start += 1
            if text[data_start : data_start + 1] == b"\n":
                data_start += 1
            return text[: match.start()], name.group(1).decode(), text[data_start:]
        pos = match.end()
    return None


def _decompress(data: bytes, encoding: str) -> bytes:
    """A request body in any Content-Encoding clickhouse-connect sends (possibly several frames)."""
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        out = bytearray()
        while data:
            decomp = lz4.frame.LZ4FrameDecompressor()
            out += decomp.decompress(data)
            data = decomp.unused_data if decomp.eof else b""
        return bytes(out)
    if encoding == "zstd":
        import zstandard

        zout = bytearray()
        while data:
            zdecomp = zstandard.ZstdDecompressor().decompressobj()
            zout += zdecomp.decompress(data)
            data = zdecomp.unused_data if zdecomp.eof else b""
        return bytes(zout)
    raise EngineError.of(48, "NOT_IMPLEMENTED", f"Unknown HTTP Content-Encoding: {encoding}")


def _compress(data: bytes, encoding: str, level: int) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=max(1, min(9, level)))
    if encoding == "deflate":
        return zlib.compress(data, max(1, min(9, level)))
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.compress(data))
    import zstandard

    return bytes(zstandard.ZstdCompressor(level=max(1, min(19, level))).compress(data))


def _quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class _Session:
    __slots__ = ("applied", "baseline", "conn", "database", "expires", "lock", "timeout")

    def __init__(self, conn: Any, timeout: float) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.timeout = timeout
        self.expires = time.monotonic() + timeout
        self.applied: dict[str, str] = {}  # request settings in force on the connection
        self.baseline: dict[str, str | None] = {}  # the session's own values under them (None: default)
        self.database: str | None = None


class Engine:
    """The chdb engine of this process: fresh connections per request, kept ones per session."""

    def __init__(self, path: Path) -> None:
        from chdb import _chdb

        self._chdb: Any = _chdb
        self.path = str(path)
        path.mkdir(parents=True, exist_ok=True)
        # Keeps the engine up: chdb stops it when the last connection closes.
        self._keeper = self._chdb.connect(self.path)
        info = self._keeper.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = info[0], info[1].strip()
        names = self._keeper.query("SELECT name FROM system.settings", "TabSeparated").bytes().decode()
        self.settings_names = frozenset(names.split())
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            with session.lock, contextlib.suppress(Exception):
                session.conn.close()
        with contextlib.suppress(Exception):
            self._keeper.close()

    def check_settings(self, settings: Mapping[str, str]) -> None:
        for name in settings:
            if name not in self.settings_names:
                raise EngineError.of(115, "UNKNOWN_SETTING", f"Unknown setting '{name}'")

    def execute(self, query: Query) -> Outcome:
        """Run one request to completion (blocking: called in a worker thread)."""
        self.check_settings(query.settings)
        if query.session_id is None:
            conn = self._connect(query.settings, query.database)
            try:
                return self._run(conn, query)
            finally:
                conn.close()
        session = self._session(query)
        if not session.lock.acquire(blocking=False):
            raise EngineError.of(
                373, "SESSION_IS_LOCKED", f"Session {query.session_id} is locked by a concurrent client"
            )
        try:
            self._apply_session_state(session, query)
            return self._run(session.conn, query)
        finally:
            session.expires = time.monotonic() + session.timeout
            session.lock.release()

    def _connect(self, settings: Mapping[str, str], database: str | None) -> Any:
        options: dict[str, str] = {}
        late: dict[str, str] = {}
        for name, value in settings.items():
            (options if _SAFE_VALUE.match(value) else late)[name] = value
        if database:
            if _SAFE_VALUE.match(database):
                options["database"] = database
        target = self.path + ("?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else "")
        try:
            conn = self._chdb.connect(target)
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None
        try:
            if database and "database" not in options:
                conn.query(f"USE {_quote_ident(database)}", "TabSeparated")
            if late:
                conn.query(
                    "SET " + ", ".join(f"{k} = {_quote_literal(v)}" for k, v in late.items()), "TabSeparated"
                )
        except RuntimeError as exc:
            conn.close()
            raise EngineError.from_engine(exc) from None
        return conn

    def _session(self, query: Query) -> _Session:
        assert query.session_id is not None
        now = time.monotonic()
        expired: list[_Session] = []
        with self._sessions_lock:
            for key, session in list(self._sessions.items()):
                if session.expires < now and not session.lock.locked():
                    expired.append(self._sessions.pop(key))
            found = self._sessions.get(query.session_id)
            if found is None:
                if query.session_check:
                    raise EngineError.of(372, "SESSION_NOT_FOUND", f"Session {query.session_id} not found")
                try:
                    conn = self._chdb.connect(self.path)
                except RuntimeError as exc:
                    raise EngineError.from_engine(exc) from None
                session = self._sessions[query.session_id] = _Session(conn, query.session_timeout)
            else:
                # Refreshed under the lock, so a concurrent sweep cannot close it before it is used.
                session = found
                session.timeout = query.session_timeout
                session.expires = now + session.timeout
        for old in expired:
            with contextlib.suppress(Exception):
                old.conn.close()
        return session

    def _apply_session_state(self, session: _Session, query: Query) -> None:
        # Request settings apply to that request only. The session's own value of a setting is
        # read before a request first overrides it and put back when a request no longer does;
        # nothing is run when the client sends the same settings every time (clickhouse-connect).
        conn = session.conn
        try:
            if query.database and query.database != session.database:
                conn.query(f"USE {_quote_ident(query.database)}", "TabSeparated")
                session.database = query.database
            fresh = [k for k in query.settings if k not in session.applied]
            if fresh:
                names = ", ".join(_quote_literal(k) for k in fresh)
                rows = conn.query(
                    f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})", "JSONEachRow"
                ).bytes()
                for line in rows.splitlines():
                    row = json.loads(line)
                    session.baseline[row["name"]] = row["value"] if row["changed"] else None
            changes = []
            for k in session.applied:
                if k not in query.settings:
                    own = session.baseline.get(k)
                    changes.append(f"{k} = " + ("DEFAULT" if own is None else _quote_literal(own)))
            for k, v in query.settings.items():
                if session.applied.get(k) != v:
                    changes.append(f"{k} = {_quote_literal(v)}")
            if changes:
                conn.query("SET " + ", ".join(changes), "TabSeparated")
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None
        for k in session.applied:
            if k not in query.settings:
                session.baseline.pop(k, None)
        session.applied = dict(query.settings)

    @staticmethod
    def _insert(conn: Any, head: str, fmt: str, data: bytes) -> Any:
        inserter = conn.send_insert(head, fmt)
        try:
            conn.insert_append(inserter, data)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.insert_cancel(inserter)
            raise
        return conn.insert_done(inserter)

    def _run(self, conn: Any, query: Query) -> Outcome:
        try:
            for table in query.external:
                name = _quote_ident(table.name)
                conn.query(f"CREATE TEMPORARY TABLE {name} ({table.structure})", "TabSeparated")
                self._insert(conn, f"INSERT INTO {name}", table.format, table.data)
            try:
                return self._run_query(conn, query)
            finally:
                for table in query.external:  # a session outlives the request; its tables must not
                    with contextlib.suppress(RuntimeError):
                        conn.query(f"DROP TEMPORARY TABLE IF EXISTS {_quote_ident(table.name)}", "TSV")
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None

    def _run_query(self, conn: Any, query: Query) -> Outcome:
        try:
            if query.insert_format is not None:
                result = self._insert(conn, query.sql, query.insert_format, query.data)
                return Outcome(b"", query.default_format, self._summary(result, written=True))
            multi = _MULTI_STATEMENT_HINT.search(query.sql)
            if multi and conn.classify_query(query.sql)["statement_count"] > 1:
                raise EngineError.of(62, "SYNTAX_ERROR", "Syntax error: Multi-statements are not allowed")
            match = _TRAILING_FORMAT.search(query.sql)
            fmt = match.group(1) if match else query.default_format
            result = conn.query(query.sql, query.default_format, params=dict(query.params))
            body = result.bytes()
            return Outcome(body, fmt, self._summary(result, written=False, result_bytes=len(body)))
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None

    @staticmethod
    def _summary(result: Any, *, written: bool, result_bytes: int = 0) -> dict[str, str]:
        def stat(name: str) -> int:
            getter = getattr(result, name, None)
            try:
                return int(getter()) if getter is not None else 0
            except Exception:  # a statistic chdb does not keep is reported as 0
                return 0

        elapsed = getattr(result, "elapsed", None)
        return {
            "read_rows": str(0 if written else stat("rows_read")),
            "read_bytes": str(0 if written else stat("bytes_read")),
            "written_rows": str(stat("rows_written")),
            "written_bytes": str(stat("bytes_written")),
            "total_rows_to_read": "0",
            "result_rows": "0",
            "result_bytes": str(result_bytes),
            "elapsed_ns": str(int(float(elapsed()) * 1e9) if elapsed is not None else 0),
        }


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
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
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
            self._authenticate(headers, params)
            body = await self._read_body(receive)
            limiter = self._limiter or anyio.CapacityLimiter(self._threads)
            self._limiter = limiter
            # Decoding (decompression, finding the data of an INSERT) and the engine call run in a
            # worker thread: the event loop only moves bytes.
            outcome = await anyio.to_thread.run_sync(
                self._execute, scope["method"], headers, params, body, limiter=limiter
            )
        except EngineError as err:
            await self._error(send, err, query_id)
            return
        except Exception as exc:  # reported to the client as a ClickHouse error, as a server would
            failure = EngineError.of(1001, "STD_EXCEPTION", f"{type(exc).__name__}: {exc}")
            await self._error(send, failure, query_id)
            return
        reply_headers = self._common_headers(query_id)
        reply_headers += [
            ("x-clickhouse-format", outcome.format),
            ("x-clickhouse-summary", json.dumps(dict(outcome.summary), separators=(",", ":"))),
            ("content-type", self._content_type(outcome.format)),
        ]
        payload = outcome.body
        encoding = self._response_encoding(headers, params)
        if encoding and payload:
            level = int(params.get("http_zlib_compression_level", "3") or 3)
            payload = await anyio.to_thread.run_sync(_compress, payload, encoding, level)
            reply_headers.append(("content-encoding", encoding))
        await self._reply(send, 200, payload, reply_headers)

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
    def _check_client(scope: Scope) -> None:
        client = scope.get("client")
        host = client[0] if client else None
        if host is None:  # a unix socket: reachable only through the filesystem
            return
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise EngineError.of(
                195, "IP_ADDRESS_NOT_ALLOWED", f"Connections from {host} are not allowed: loopback only"
            )

    def _authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> None:
        user: str | None = headers.get("x-clickhouse-user") or params.get("user")
        password: str | None = headers.get("x-clickhouse-key") or params.get("password")
        auth = headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
            except ValueError:
                decoded = ""
            basic_user, _, basic_password = decoded.partition(":")
            user, password = user or basic_user, password or basic_password
        user = user or USER
        if not password:
            raise EngineError.of(
                194, "REQUIRED_PASSWORD", f"{user}: Authentication failed: password is required"
            )
        if user != USER or not hmac.compare_digest(password.encode(), self._password):
            raise EngineError.of(
                516,
                "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
            )

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
        self, method: str, headers: Mapping[str, str], params: Mapping[str, str], body: bytes
    ) -> Outcome:
        return self.engine.execute(self._decode(method, headers, params, body))

    def _decode(
        self, method: str, headers: Mapping[str, str], params: Mapping[str, str], body: bytes
    ) -> Query:
        if any(params.get(name, "0") not in ("", "0", "false") for name in ("compress", "decompress")):
            raise EngineError.of(
                48, "NOT_IMPLEMENTED",
                "ClickHouse block compression (compress/decompress=1) is not supported by the chdb adaptor",
            )
        body = _decompress(body, headers.get("content-encoding", "").strip().lower())
        external: list[ExternalTable] = []
        content_type = headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            # Form-encoded queries and parameters (clickhouse-connect's choice for long parameter
            # values) and external data: each file is a temporary table named after its field.
            fields, files = parse_form(content_type, body)
            params = {**params, **fields}
            for name, data in files:
                external.append(self._external_table(params, name, data))
            suffixes = ("structure", "types", "format")
            reserved = {f"{name}_{suffix}" for name, _ in files for suffix in suffixes}
            params = {k: v for k, v in params.items() if k not in reserved}
            body = b""
        text = params.get("query", "").encode()
        if text and body:
            text += b"\n" + body
        elif body:
            text = body
        if not text.strip():
            raise EngineError.of(62, "SYNTAX_ERROR", "Empty query")
        split = split_insert(text)
        if split is not None:
            head, fmt, data = split
            sql, insert_format = head.decode(errors="replace"), fmt
        else:
            try:
                sql = text.decode()
            except UnicodeDecodeError:
                raise EngineError.of(
                    27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "the query is not valid UTF-8 text"
                ) from None
            insert_format, data = None, b""
        settings = {k: v for k, v in params.items() if k not in _HTTP_PARAMS and not k.startswith("param_")}
        if method == "GET":
            settings.setdefault("readonly", "2")
        try:
            timeout = float(params.get("session_timeout") or 60)
        except ValueError:
            raise EngineError.of(36, "BAD_ARGUMENTS", "session_timeout must be a number of seconds") from None
        return Query(
            sql=sql,
            insert_format=insert_format,
            data=data,
            params={k[6:]: v for k, v in params.items() if k.startswith("param_")},
            settings=settings,
            database=params.get("database") or None,
            default_format=params.get("default_format") or "TabSeparated",
            session_id=params.get("session_id") or None,
            session_timeout=timeout,
            session_check=params.get("session_check", "0") in ("1", "true"),
            external=tuple(external),
        )

    @staticmethod
    def _external_table(params: Mapping[str, str], name: str, data: bytes) -> ExternalTable:
        structure = params.get(f"{name}_structure")
        if not structure and params.get(f"{name}_types"):
            types = params[f"{name}_types"].split(",")
            structure = ", ".join(f"_{i} {t.strip()}" for i, t in enumerate(types, 1))
        if not structure:
            raise EngineError.of(
                36, "BAD_ARGUMENTS", f"Neither structure nor types were given for external table {name}"
            )
        fmt = params.get(f"{name}_format") or "TabSeparated"
        return ExternalTable(name, structure, fmt, data)

    def _common_headers(self, query_id: str) -> list[tuple[str, str]]:
        return [
            ("x-clickhouse-server-display-name", self.display_name),
            ("x-clickhouse-query-id", query_id),
            ("x-clickhouse-timezone", self.engine.timezone),
        ]

    @staticmethod
    def _content_type(fmt: str) -> str:
        if fmt in _CONTENT_TYPES:
            return _CONTENT_TYPES[fmt]
        if fmt.startswith(_BINARY_FORMATS):
            return "application/octet-stream"
        return "text/plain; charset=UTF-8"

    @staticmethod
    def _response_encoding(headers: Mapping[str, str], params: Mapping[str, str]) -> str | None:
        if params.get("enable_http_compression", "0") not in ("1", "true"):
            return None
        accept = headers.get("accept-encoding", "")
        offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
        for encoding in offered:
            if encoding in ("lz4", "zstd", "gzip", "deflate"):
                return encoding
        return None

    async def _error(self, send: Send, err: EngineError, query_id: str) -> None:
        message = err.message
        if "(version " not in message:
            message += f" (version {self.engine.version})"
        headers = self._common_headers(query_id)
        headers += [
            ("x-clickhouse-exception-code", str(err.code)),
            ("content-type", "text/plain; charset=UTF-8"),
        ]
        await self._reply(send, _STATUS_BY_CODE.get(err.code, 500), (message + "\n").encode(), headers)

    @staticmethod
    async def _reply(send: Send, status: int, body: bytes, headers: Iterable[tuple[str, str]]) -> None:
        # Header values come from us or echo the client (query_id): keep them on one latin-1 line.
        raw = [
            (k.encode("latin-1"), v.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace"))
            for k, v in headers
        ]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    """Serve the engine at ``--path`` on the inherited listening socket ``--fd``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m isolated_env._servers.chdb_adaptor")
    parser.add_argument("--path", required=True, type=Path, help="the engine's data directory")
    parser.add_argument("--fd", required=True, type=int, help="an inherited listening socket on loopback")
    parser.add_argument("--password-file", required=True, type=Path, help="a 0600 file holding the password")
    parser.add_argument("--threads", type=int, default=32, help="engine calls running at once")
    args = parser.parse_args(argv)
    password = args.password_file.read_text().strip()
    sock = socket.socket(fileno=args.fd)
    engine = Engine(args.path)
    app = Adaptor(engine, password, threads=args.threads)
    config = uvicorn.Config(
        app, http="h11", lifespan="on", log_level="warning", access_log=False, server_header=False,
        date_header=False, timeout_keep_alive=30, ws="none",
    )
    print(f"chdb adaptor: ClickHouse {engine.version} at {args.path}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
