"""Request and response compression of the ClickHouse HTTP interface (``Content-Encoding``).

clickhouse-connect compresses each block of an insert on its own, so a request body may hold
several frames of one codec; a reply is compressed only when the client asked for it with
``enable_http_compression=1`` and accepts the encoding.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = [
    "ENCODINGS", "UnknownEncoding", "compress", "compression_level", "compressor", "decompress", "response_encoding",
]


class UnknownEncoding(ValueError):
    """A ``Content-Encoding`` this interface does not speak."""


ENCODINGS = ("lz4", "zstd", "gzip", "deflate")
"""Response encodings, in the order they are preferred when a client accepts several."""

def decompress(data: bytes, encoding: str) -> bytes:
    """A request body in any Content-Encoding clickhouse-connect sends (possibly several frames)."""
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)  # reads every member
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
    raise UnknownEncoding(f"Unknown HTTP Content-Encoding: {encoding}")


def compress(data: bytes, encoding: str, level: int) -> bytes:
    """A reply body in one of :data:`ENCODINGS`; ``level`` is clamped to what the codec takes."""
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=max(1, min(9, level)))
    if encoding == "deflate":
        return zlib.compress(data, max(1, min(9, level)))
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.compress(data))
    if encoding == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=max(1, min(19, level))).compress(data))
    raise UnknownEncoding(f"unknown response encoding {encoding!r}")


class _Incremental(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Lz4:
    """An lz4 frame written chunk by chunk."""

    def __init__(self) -> None:
        import lz4.frame

        self._frame = lz4.frame.LZ4FrameCompressor()
        self._head: bytes | None = self._frame.begin()

    def compress(self, data: bytes) -> bytes:
        head, self._head = self._head or b"", None
        return head + bytes(self._frame.compress(data))

    def flush(self) -> bytes:
        head, self._head = self._head or b"", None
        return head + bytes(self._frame.flush())


def compressor(encoding: str, level: int) -> _Incremental:
    """A compressor for a streamed reply body in one of :data:`ENCODINGS` (one frame for the whole body)."""
    if encoding == "gzip":
        return zlib.compressobj(max(1, min(9, level)), zlib.DEFLATED, 31)
    if encoding == "deflate":
        return zlib.compressobj(max(1, min(9, level)))
    if encoding == "lz4":
        return _Lz4()
    if encoding == "zstd":
        import zstandard

        return _Zstd(zstandard.ZstdCompressor(level=max(1, min(19, level))).compressobj())
    raise UnknownEncoding(f"unknown response encoding {encoding!r}")


class _Zstd:
    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def compress(self, data: bytes) -> bytes:
        return bytes(self._obj.compress(data))

    def flush(self) -> bytes:
        return bytes(self._obj.flush())


def response_encoding(headers: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    """The encoding of the reply: only with ``enable_http_compression=1`` and one the client accepts."""
    if params.get("enable_http_compression", "0") not in ("1", "true"):
        return None
    accept = headers.get("accept-encoding", "")
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for encoding in offered:
        if encoding in ENCODINGS:
            return encoding
    return None


def compression_level(params: Mapping[str, str]) -> int:
    """``http_zlib_compression_level`` (3 when absent or empty)."""
    text = params.get("http_zlib_compression_level", "") or "3"
    if not text.strip().lstrip("+-").isdigit():
        raise ValueError(f"http_zlib_compression_level must be an integer, not {text!r}")
    return int(text)
