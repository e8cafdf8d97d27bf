"""The reply side of the ClickHouse HTTP interface: status codes and ``X-ClickHouse-*`` headers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from .protocol import EngineError, Outcome

__all__ = [
    "common_headers", "content_type", "encode_headers", "error_reply", "exception_block", "status_for",
    "result_summary", "success_headers", "summary",
]

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


def summary(
    *, read_rows: int = 0, read_bytes: int = 0, written_rows: int = 0, written_bytes: int = 0,
    result_bytes: int = 0, elapsed: float = 0.0,
) -> dict[str, str]:
    """The ``X-ClickHouse-Summary`` object, every figure a string as the server sends it."""
    return {
        "read_rows": str(read_rows),
        "read_bytes": str(read_bytes),
        "written_rows": str(written_rows),
        "written_bytes": str(written_bytes),
        "total_rows_to_read": "0",
        "result_rows": "0",
        "result_bytes": str(result_bytes),
        "elapsed_ns": str(int(elapsed * 1e9)),
    }


def _figure(result: Any, name: str) -> float:
    getter: Callable[[], Any] | None = getattr(result, name, None)
    if getter is None:  # a statistic this chdb does not keep is reported as 0
        return 0.0
    return float(getter())


def result_summary(results: list[Any], result_bytes: int) -> dict[str, str]:
    """The summary of the engine's results ``results`` (the chunks of a stream, or one result)."""
    return summary(
        read_rows=sum(int(_figure(r, "rows_read")) for r in results),
        read_bytes=sum(int(_figure(r, "bytes_read")) for r in results),
        written_rows=sum(int(_figure(r, "rows_written")) for r in results),
        written_bytes=sum(int(_figure(r, "bytes_written")) for r in results),
        result_bytes=result_bytes, elapsed=max((_figure(r, "elapsed") for r in results), default=0.0),
    )


def status_for(code: int) -> int:
    """The HTTP status of a reply failing with ClickHouse error ``code`` (500 for the rest)."""
    return _STATUS_BY_CODE.get(code, 500)


def content_type(fmt: str) -> str:
    if fmt in _CONTENT_TYPES:
        return _CONTENT_TYPES[fmt]
    if fmt.startswith(_BINARY_FORMATS):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def common_headers(display_name: str, query_id: str, timezone: str) -> list[tuple[str, str]]:
    """The headers of every reply to a query, success or failure."""
    return [
        ("x-clickhouse-server-display-name", display_name),
        ("x-clickhouse-query-id", query_id),
        ("x-clickhouse-timezone", timezone),
    ]


def success_headers(outcome: Outcome, exception_tag: str) -> list[tuple[str, str]]:
    """The headers of a reply that starts well; ``exception_tag`` marks a failure written mid-stream."""
    headers = [("x-clickhouse-summary", json.dumps(dict(outcome.summary), separators=(",", ":")))]
    if outcome.format is not None:  # a statement without a result table gets none, as on a server
        headers.append(("x-clickhouse-format", outcome.format))
    headers.append(("content-type", content_type(outcome.format or "")))
    headers.append(("x-clickhouse-exception-tag", exception_tag))
    return headers


def exception_block(err: EngineError, version: str, tag: str) -> bytes:
    """The block a server writes into a reply whose rows were already sent when the query failed:
    ``__exception__``, the tag of the reply's ``X-ClickHouse-Exception-Tag``, the message and its length."""
    message = _with_version(err.message, version).encode()
    return b"\r\n__exception__\r\n%s\r\n%s\n%d %s\r\n__exception__\r\n" % (
        tag.encode(), message, len(message), tag.encode()
    )


def _with_version(message: str, version: str) -> str:
    return message if "(version " in message else message + f" (version {version})"


def error_reply(err: EngineError, version: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers of a failed request: the engine's text, with its version as a server adds it."""
    message = _with_version(err.message, version)
    headers = [("x-clickhouse-exception-code", str(err.code)), ("content-type", "text/plain; charset=UTF-8")]
    return status_for(err.code), (message + "\n").encode(), headers


def encode_headers(headers: Iterable[tuple[str, str]], body_length: int | None) -> list[tuple[bytes, bytes]]:
    """ASGI headers; values come from us or echo the client (query_id), so each stays on one latin-1 line.
    ``body_length`` None: the body is streamed (chunked)."""
    raw = [
        (k.encode("latin-1"), v.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace"))
        for k, v in headers
    ]
    if body_length is not None:
        raw.append((b"content-length", str(body_length).encode()))
    return raw
