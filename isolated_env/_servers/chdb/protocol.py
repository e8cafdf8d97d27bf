"""The ClickHouse HTTP interface as the chdb adaptor speaks it: everything that needs no engine.

A request is decoded here into a :class:`Query` (query text from the ``query`` parameter and the
body, ``INSERT ... FORMAT`` data split off, ``param_<name>`` values for ``{name:Type}``
placeholders, every other unknown parameter a query setting, multipart forms and external data,
compressed bodies), the client is checked here (loopback peer, the one user and its password),
and the SQL quoting the engine side needs lives here. Its siblings :mod:`.compression` (the
``Content-Encoding`` codecs) and :mod:`.reply` (status codes, ``X-ClickHouse-*`` headers) are the
rest of the interface. None of them imports chdb or touches a socket, so all of it is
unit-tested on its own.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import parse_qsl

from .compression import UnknownEncoding, decompress
from .sql import (
    count_statements,
    first_word,
    has_output,
    may_hold_several_statements,
    quote_ident,
    quote_literal,
    result_format,
    split_insert,
)

__all__ = [
    "HTTP_PARAMS", "USER", "EngineError", "ExternalTable", "Outcome", "Query", "authenticate",
    "check_client", "count_statements", "decode_request", "first_word", "has_output", "may_hold_several_statements",
    "owner_of", "parse_form", "parse_params", "quote_ident", "quote_literal", "result_format", "split_insert",
    "user_password",
]

USER = "default"
"""The admin user (isolated_env itself); its password is generated per server. Lease users are
the other users the adaptor knows (see :mod:`.guard`)."""

HTTP_PARAMS = frozenset(
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
"""Parameters the HTTP layer consumes itself; every other parameter is a query setting."""

_LEASE_USER = re.compile(r"^ie_[a-z0-9]+_\d+_s\d+$")

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
        """The engine's own ``Code: N. ...`` text, wherever it sits in a driver's message."""
        text = str(exc).strip()
        start = text.find("Code: ")
        if start > 0:
            text = text[start:]
        match = re.match(r"Code: (\d+)\.", text)
        if match is None:
            return cls(1001, f"Code: 1001. DB::Exception: {text}")
        return cls(int(match.group(1)), text)


@dataclasses.dataclass(frozen=True)
class ExternalTable:
    """A file of a multipart request, queried as a temporary table named after its field."""

    name: str
    structure: str
    format: str
    data: bytes


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
    wait_end: bool = False  # wait_end_of_query=1: the whole result before the reply (a late error is a 500)
    user: str = USER  # who sent it (set once authenticated): the default user, or a lease user
    protocol: int = 0  # client_protocol_version: the revision Native output is written for (see .native)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a request produced: the body, its format and the ``X-ClickHouse-Summary`` figures."""

    body: bytes
    format: str | None  # None: the statement has no result table (DDL, SET, INSERT, ...)
    summary: Mapping[str, str]
    # The rest of a result that is still being produced: each call returns the next chunk, b"" at
    # its end, or raises EngineError (a late failure); ``close()`` ends it early. None: body is all.
    rest: Stream | None = None


class Stream(Protocol):
    """The unread part of a result streamed from the engine (its calls block: run them in a thread)."""

    def __call__(self) -> bytes: ...

    def close(self) -> None: ...


def parse_params(query_string: bytes) -> dict[str, str]:
    """The URL parameters of a request (the last value of a repeated name wins, as on a server)."""
    return dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))


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


def decode_request(method: str, headers: Mapping[str, str], params: Mapping[str, str], body: bytes) -> Query:
    """A request (URL parameters, lower-cased headers, raw body) as the :class:`Query` to run."""
    if any(params.get(name, "0") not in ("", "0", "false") for name in ("compress", "decompress")):
        raise EngineError.of(
            48, "NOT_IMPLEMENTED",
            "ClickHouse block compression (compress/decompress=1) is not supported by the chdb adaptor",
        )
    try:
        body = decompress(body, headers.get("content-encoding", "").strip().lower())
    except UnknownEncoding as exc:
        raise EngineError.of(48, "NOT_IMPLEMENTED", str(exc)) from None
    external: list[ExternalTable] = []
    content_type = headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        # Form-encoded queries and parameters (clickhouse-connect's choice for long parameter
        # values) and external data: each file is a temporary table named after its field.
        fields, files = parse_form(content_type, body)
        params = {**params, **fields}
        external = [_external_table(params, name, data) for name, data in files]
        reserved = {f"{name}_{suffix}" for name, _ in files for suffix in ("structure", "types", "format")}
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
        head, insert_format, data = split
        sql: str = head.decode("utf-8", "surrogateescape")
    else:
        # Bytes that are not UTF-8 (binary parameters such as Parquet data) survive as surrogates
        # and go to the engine as the bytes they were (see ``engine.sql_bytes``).
        sql = text.decode("utf-8", "surrogateescape")
        insert_format, data = None, b""
    settings = {k: v for k, v in params.items() if k not in HTTP_PARAMS and not k.startswith("param_")}
    if method == "GET":
        settings.setdefault("readonly", "2")
    try:
        timeout = float(params.get("session_timeout") or 60)
    except ValueError:
        raise EngineError.of(36, "BAD_ARGUMENTS", "session_timeout must be a number of seconds") from None
    revision = params.get("client_protocol_version") or "0"
    if not revision.isdigit():
        raise EngineError.of(36, "BAD_ARGUMENTS", "client_protocol_version must be a revision number, e.g. 54405")
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
        wait_end=params.get("wait_end_of_query", "0") in ("1", "true"),
        protocol=int(revision),
    )


def _external_table(params: Mapping[str, str], name: str, data: bytes) -> ExternalTable:
    structure = params.get(f"{name}_structure")
    if not structure and params.get(f"{name}_types"):
        types = params[f"{name}_types"].split(",")
        structure = ", ".join(f"_{i} {t.strip()}" for i, t in enumerate(types, 1))
    if not structure:
        raise EngineError.of(
            36, "BAD_ARGUMENTS", f"Neither structure nor types were given for external table {name}"
        )
    return ExternalTable(name, structure, params.get(f"{name}_format") or "TabSeparated", data)


def authenticate(headers: Mapping[str, str], params: Mapping[str, str], password: bytes) -> str:
    """The user of a request, from headers, parameters or Basic auth: the default user with the
    server's password, or a lease user with the password derived for it (see :mod:`.guard`)."""
    user: str | None = headers.get("x-clickhouse-user") or params.get("user")
    given: str | None = headers.get("x-clickhouse-key") or params.get("password")
    auth = headers.get("authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError both are
            decoded = ""
        basic_user, _, basic_password = decoded.partition(":")
        user, given = user or basic_user, given or basic_password
    user = user or USER
    if not given:
        raise EngineError.of(194, "REQUIRED_PASSWORD", f"{user}: Authentication failed: password is required")
    if user == USER:
        expected = password
    elif owner_of(user) is not None:
        expected = user_password(password.decode(), user).encode()
    else:
        expected = b""
    if not expected or not hmac.compare_digest(given.encode(), expected):
        raise EngineError.of(
            516,
            "AUTHENTICATION_FAILED",
            f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
        )
    return user


def user_password(secret: str, user: str) -> str:
    """The password of the lease user ``user``: derived from the server's secret, so isolated_env
    makes a user without asking the server, and only a holder of the secret can."""
    return hmac.new(secret.encode(), b"clickhouse:" + user.encode(), hashlib.sha256).hexdigest()


def owner_of(user: str) -> str | None:
    """``user`` when it names a lease user (``ie_<run>_<pid>_s<k>``), else None."""
    return user if _LEASE_USER.match(user) else None


def check_client(host: str | None) -> None:
    """Refuse a peer that is not loopback (``None``, a unix socket, is reachable only through files)."""
    if host is None:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise EngineError.of(195, "IP_ADDRESS_NOT_ALLOWED", f"Connections from {host} are not allowed: loopback only")
