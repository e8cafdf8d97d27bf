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
from urllib.parse import parse_qsl

from .compression import UnknownEncoding, decompress

__all__ = [
    "HTTP_PARAMS", "USER", "EngineError", "ExternalTable", "Outcome", "Query", "authenticate",
    "check_client", "count_statements", "decode_request", "may_hold_several_statements", "owner_of", "parse_form",
    "parse_params", "quote_ident", "quote_literal", "result_format", "split_insert", "user_password",
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

_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_MULTI_STATEMENT_HINT = re.compile(r";\s*\S")
# Tokens of SQL text: enough to tell keywords and ``;`` outside quotes and comments.
_TOKEN = re.compile(
    rb"""\s+|--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*|.""",
    re.DOTALL,
)
_FORMAT_NAME = re.compile(rb"\s+([A-Za-z0-9_]+)")
_LEASE_USER = re.compile(r"^ie_[a-z0-9]+_\d+_s\d+$")
_MAX_HEAD = 256 * 1024  # ClickHouse's max_query_size: the INSERT head is looked for only this far

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
    user: str = USER  # who sent it (set once authenticated): the default user, or a lease user


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a request produced: the body, its format and the ``X-ClickHouse-Summary`` figures."""

    body: bytes
    format: str
    summary: Mapping[str, str]


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


def _is_word(token: bytes) -> bool:
    return token[:1].isalpha() or token[:1] == b"_"


def _is_blank(token: bytes) -> bool:
    return token.isspace() or token.startswith((b"--", b"/*"))


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
        word = token.upper() if _is_word(token) else b""
        if first and word:
            if word != b"INSERT":
                return None
            first = False
        elif first and not _is_blank(token):
            return None
        elif word in (b"VALUES", b"SELECT", b"WITH"):
            return None
        elif word == b"FORMAT":
            name = _FORMAT_NAME.match(text, match.end())
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


def may_hold_several_statements(sql: str) -> bool:
    """A cheap pre-check: only text with a ``;`` followed by more text needs counting."""
    return _MULTI_STATEMENT_HINT.search(sql) is not None


def count_statements(sql: str) -> int:
    """How many ``;``-separated statements ``sql`` holds, by tokens (quotes and comments known).

    The engine's own parser is the authority (see ``engine.statement_count``); this count is what
    is used when that parser cannot be reached. It does not know heredoc strings (``$$...$$``).
    """
    text = sql.encode()
    count, pending, pos = 0, False, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match is not None  # the pattern matches any byte
        token = match.group()
        if token == b";":
            count, pending = count + pending, False
        elif not _is_blank(token):
            pending = True
        pos = match.end()
    return count + pending


def result_format(sql: str, default: str) -> str:
    """The format of a reply: a trailing ``FORMAT <name>`` of the query, else ``default_format``."""
    match = _TRAILING_FORMAT.search(sql)
    return match.group(1) if match else default


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
        sql: str = head.decode(errors="replace")
    else:
        try:
            sql = text.decode()
        except UnicodeDecodeError:
            raise EngineError.of(
                27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "the query is not valid UTF-8 text"
            ) from None
        insert_format, data = None, b""
    settings = {k: v for k, v in params.items() if k not in HTTP_PARAMS and not k.startswith("param_")}
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


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
