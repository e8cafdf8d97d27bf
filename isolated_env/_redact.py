"""Secrets never reach output: URLs and DSNs are shown with their password replaced."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url", "scrubbed", "secret_digest"]


def redact_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]  # as written: brackets of an IPv6 address, the port
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def scrubbed(exc: BaseException) -> BaseException:
    """``exc`` and the exceptions chained to it without their tracebacks.

    A driver's failure to connect is raised through frames whose locals hold the password
    (``connect(..., password=...)``), and ``pytest --showlocals`` prints every local of every frame
    of a chained cause. The cause keeps its type and message; only the driver's frames go.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        todo += [current.__cause__, current.__context__]
    return exc


def secret_digest(secret: str | None) -> str | None:
    """A stand-in for ``secret`` in cache keys, which tracebacks may print."""
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()[:16]
