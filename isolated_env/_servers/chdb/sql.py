"""The SQL text side of the ClickHouse HTTP interface: statements read as tokens, no engine needed.

Where an ``INSERT ... FORMAT`` head ends and its data starts, how many statements a text holds,
whether a statement returns a table (and in which format), and the quoting of names and values.
"""

from __future__ import annotations

import re

__all__ = [
    "count_statements",
    "first_word",
    "has_output",
    "may_hold_several_statements",
    "quote_ident",
    "quote_literal",
    "result_format",
    "split_insert",
    "strip_format",
]

_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_MULTI_STATEMENT_HINT = re.compile(r";\s*\S")
# Tokens of SQL text: enough to tell keywords and ``;`` outside quotes and comments.
_TOKEN = re.compile(
    rb"""\s+|--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*|.""",
    re.DOTALL,
)
_FORMAT_NAME = re.compile(rb"\s+([A-Za-z0-9_]+)")
# Statements whose result is no table: a server sends them no X-ClickHouse-Format (clickhouse-connect's
# command() then returns a QuerySummary). Any other first word may produce rows, as SELECT does.
_NO_OUTPUT = frozenset(
    {
        b"CREATE",
        b"DROP",
        b"ALTER",
        b"SET",
        b"USE",
        b"INSERT",
        b"SYSTEM",
        b"OPTIMIZE",
        b"RENAME",
        b"TRUNCATE",
        b"ATTACH",
        b"DETACH",
        b"GRANT",
        b"REVOKE",
        b"UNDROP",
        b"EXCHANGE",
        b"DELETE",
        b"UPDATE",
        b"REPLACE",
        b"BEGIN",
        b"COMMIT",
        b"ROLLBACK",
        b"MOVE",
    }
)
_MAX_HEAD = 256 * 1024  # ClickHouse's max_query_size: the INSERT head is looked for only this far


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


def result_format(sql: str, default: str) -> str | None:
    """The format of a reply: a trailing ``FORMAT <name>`` of the query, else ``default_format``;
    None for a statement that returns no table (see :func:`has_output`)."""
    match = _TRAILING_FORMAT.search(sql)
    if match:
        return match.group(1)
    return default if has_output(sql) else None


def strip_format(sql: str) -> str:
    """``sql`` without its trailing ``FORMAT <name>`` and ``;`` (to be wrapped in another statement)."""
    return _TRAILING_FORMAT.sub("", sql).rstrip().rstrip(";").rstrip()


def has_output(sql: str) -> bool:
    """Whether ``sql`` returns a table, by its first word."""
    return first_word(sql) not in _NO_OUTPUT


def first_word(sql: str) -> bytes:
    """The first keyword of ``sql``, upper-cased (comments and opening parentheses skipped; b"" if none)."""
    text = sql.encode("utf-8", "surrogateescape")
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match is not None  # the pattern matches any byte
        token = match.group()
        if _is_word(token):
            return token.upper()
        if not _is_blank(token) and token != b"(":
            return b""
        pos = match.end()
    return b""


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
