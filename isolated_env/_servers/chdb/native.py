"""Native output for a client protocol revision: what a server's Native writer adds for a client.

chdb writes Native as for revision 0 (no client): blocks without their ``BlockInfo`` and a
top-level ``DateTime('tz')`` column typed ``DateTime``. A client that sends
``client_protocol_version`` (clickhouse-connect does, once its probe sees block info) gets:

- from revision 51903 on, each block preceded by its ``BlockInfo`` (:data:`BLOCK_INFO`, the
  values a server writes for a result block: not overflows, bucket -1);
- from revision 54337 on, the zone in the type of such a column. The engine strips it from every
  block it writes, so a zero-row block carrying the true column types (from ``DESCRIBE``) goes
  first (:func:`header_block`): clients take a result's types from its first block.

A streamed result comes one block per chunk; a whole result (statements chdb does not stream:
``SHOW``, ``DESCRIBE``, ``EXPLAIN`` ...) is cut into its blocks by :func:`split_blocks`, which
knows the layout of the types those statements produce.
"""

from __future__ import annotations

import json
import re

from .sql import strip_format

__all__ = [
    "BLOCK_INFO", "REVISION_WITH_BLOCK_INFO", "REVISION_WITH_DATETIME_ZONE", "column_types_stripped",
    "describe_query", "header_block", "split_blocks", "with_block_info", "zone_header",
]

REVISION_WITH_BLOCK_INFO = 51903
REVISION_WITH_DATETIME_ZONE = 54337
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
"""``BlockInfo`` as a server writes it: field 1 ``is_overflows`` = 0, field 2 ``bucket_num`` = -1, end."""

_BARE_DATETIME = b"\x08DateTime"

_FIXED = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Date", "Enum16", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "Date32", "DateTime", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}
_NAMED_ELEMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s+(?=[A-Z])")


class _Unknown(Exception):
    """A type whose layout :func:`split_blocks` does not know."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _varint(data, pos)
    return data[pos : pos + size], pos + size


def _arguments(inner: str) -> list[str]:
    """The top-level comma-separated arguments of a type (quotes and brackets respected)."""
    parts: list[str] = []
    depth, start, quote, i = 0, 0, "", 0
    while i < len(inner):
        ch = inner[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
        i += 1
    parts.append(inner[start:].strip())
    return parts


def _skip(type_name: str, data: bytes, pos: int, rows: int) -> int:
    """Where the data of ``rows`` values of ``type_name`` starting at ``pos`` ends."""
    name, _, rest = type_name.partition("(")
    args = _arguments(rest[:-1]) if rest else []
    if name in _FIXED:
        return pos + rows * _FIXED[name]
    if name == "Decimal":
        precision = int(args[0])
        width = 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
        return pos + rows * width
    if name == "FixedString":
        return pos + rows * int(args[0])
    if name == "String":
        for _ in range(rows):
            size, pos = _varint(data, pos)
            pos += size
        return pos
    if name == "Nullable":
        return _skip(args[0], data, pos + rows, rows)
    if name in ("Array", "Map"):
        if rows == 0:
            return pos
        end = pos + rows * 8
        values = int.from_bytes(data[end - 8 : end], "little")
        element = args[0] if name == "Array" else f"Tuple({args[0]}, {args[1]})"
        return _skip(element, data, end, values)
    if name == "Tuple":
        for element in args:
            pos = _skip(_NAMED_ELEMENT.sub("", element), data, pos, rows)
        return pos
    raise _Unknown(type_name)


def split_blocks(body: bytes) -> list[bytes] | None:
    """The blocks of a Native ``body``, or None when a column's layout is not known here."""
    blocks: list[bytes] = []
    pos = 0
    try:
        while pos < len(body):
            start = pos
            columns, pos = _varint(body, pos)
            rows, pos = _varint(body, pos)
            for _ in range(columns):
                _, pos = _string(body, pos)
                raw_type, pos = _string(body, pos)
                pos = _skip(raw_type.decode(), body, pos, rows)
            if pos > len(body):
                return None
            blocks.append(body[start:pos])
    except (_Unknown, IndexError, ValueError, UnicodeDecodeError):
        return None
    return blocks


def column_types_stripped(first_block: bytes) -> bool:
    """Whether a block may hold a column the engine typed ``DateTime`` for a ``DateTime('tz')``
    (a cheap test: the bytes of that type name appear in it)."""
    return _BARE_DATETIME in first_block


def describe_query(sql: str) -> str:
    """The ``DESCRIBE`` that gives the engine's own types of the result of ``sql``."""
    return f"DESCRIBE ({strip_format(sql)})"


def zone_header(described: bytes) -> bytes:
    """The header block for a result whose ``DESCRIBE`` (``JSONEachRow``) is ``described``, or
    b"" when no top-level column has a zone to restore."""
    columns = [(row["name"], row["type"]) for row in map(json.loads, described.splitlines())]
    if not any(type_name.startswith("DateTime(") for _, type_name in columns):
        return b""
    return header_block(columns)


def with_block_info(body: bytes) -> bytes:
    """A whole Native result with each block preceded by its block info (one block when its
    columns' layout is unknown here: the statements chdb does not stream give small results)."""
    if not body:
        return body
    return b"".join(BLOCK_INFO + block for block in split_blocks(body) or [body])


def header_block(columns: list[tuple[str, str]]) -> bytes:
    """A zero-row block (with its block info) declaring ``columns`` as ``(name, type)``."""
    out = bytearray(BLOCK_INFO)
    out += _encode_varint(len(columns)) + b"\x00"
    for name, type_name in columns:
        for text in (name.encode(), type_name.encode()):
            out += _encode_varint(len(text)) + text
    return bytes(out)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
