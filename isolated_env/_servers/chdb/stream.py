"""Results streamed from the engine: the first chunks before the reply starts, the rest as it comes.

chdb's public ``Connection.send_query`` streams, but its ``fetch()`` drops a chunk that read no
rows, which loses the header of an empty ``TSVWithNames`` result and the whole body of an empty
``JSON`` one. The extension's own ``send_query``/``streaming_fetch_result`` keep every chunk (an
empty chunk ends the result): that seam is :func:`open_stream`, used on the tested versions only;
elsewhere a query runs to completion with ``Connection.query``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from isolated_env._drivers import _seams

from .protocol import EngineError

__all__ = ["Chunks", "concatenable", "open_stream", "streams"]

_log = logging.getLogger("isolated_env")

CHDB_TESTED = ">=4.4.0,<4.5"
CHDB_CORE_TESTED = ">=26.9.0,<26.10"


# Formats whose output is the concatenation of its blocks' output: each chunk of a stream is
# written by a fresh writer, so a format with a header, a footer or a schema (JSON, Arrow, Parquet,
# ...WithNames) is sent whole instead.
_CONCATENABLE = frozenset(
    {
        "native",
        "tabseparated",
        "tsv",
        "tabseparatedraw",
        "tsvraw",
        "csv",
        "jsoneachrow",
        "jsonlines",
        "ndjson",
        "jsoncompacteachrow",
        "jsonstringseachrow",
        "jsoncompactstringseachrow",
        "rowbinary",
        "tskv",
        "values",
        "lineasstring",
        "rawblob",
    }
)


def concatenable(fmt: str) -> bool:
    """Whether a result in ``fmt`` may be streamed chunk by chunk."""
    return fmt.lower() in _CONCATENABLE


def streams() -> bool:
    """Whether this chdb streams through :func:`open_stream` (the versions it was tested on)."""
    return _seams.tested("chdb", CHDB_TESTED) and _seams.tested("chdb-core", CHDB_CORE_TESTED)


class Chunks:
    """The chunks of one streamed result. ``next()`` returns the next one (b"" at the end) or raises
    :class:`EngineError`; ``close()`` cancels what is left and runs the request's cleanup."""

    def __init__(self, raw: Any, handle: Any, cleanup: contextlib.ExitStack) -> None:
        self._raw = raw
        self._handle = handle
        self._cleanup = cleanup
        self._done = False
        self.finished = False  # read to its end without a failure (its connection may serve again)
        self.stats: list[Any] = []  # the chunks' results (their read figures feed the summary)
        self.pending = b""  # read ahead, returned first by a call
        self.prefix = b""  # written before each chunk (one block each: its block info, see .native)

    def __call__(self) -> bytes:
        if self.pending:
            part, self.pending = self.pending, b""
            return part
        return self.next()

    def next(self) -> bytes:
        if self._done:
            return b""
        try:
            result = self._raw.streaming_fetch_result(self._handle)
        except RuntimeError as exc:
            self._done = True
            self.close()
            raise EngineError.from_engine(exc) from None
        body: bytes = result.bytes() if result is not None else b""
        if not body:
            self._done = self.finished = True
            self.close()
            return b""
        self.stats.append(result)
        return self.prefix + body if self.prefix else body

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            if not self._done:
                try:
                    self._raw.streaming_cancel_query(handle)
                except Exception:  # the reply is over either way; what is left is dropped
                    _log.debug("chdb adaptor: cancelling a streamed query failed", exc_info=True)
        self._cleanup.close()


def open_stream(conn: Any, sql: bytes, fmt: str, params: dict[str, str], cleanup: contextlib.ExitStack) -> Chunks:
    """Start ``sql`` on ``conn`` as a stream (the seam: the extension connection in ``conn._conn``)."""
    raw = conn._conn
    try:
        handle = raw.send_query(sql, fmt, params=params)
    except RuntimeError as exc:
        raise EngineError.from_engine(exc) from None
    return Chunks(raw, handle, cleanup)
