"""Request and response compression of the ClickHouse HTTP interface (``Content-Encoding``).

clickhouse-connect compresses each block of an insert on its own, so a request body may hold
several frames of one codec; a reply is compressed only when the client asked for it with
``enable_http_compression=1`` and accepts the encoding.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping

__all__ = ["ENCODINGS", "UnknownEncoding", "compress", "compression_level", "decompress", "response_encoding"]


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
