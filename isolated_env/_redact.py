"""Secrets never reach output: URLs and DSNs are shown with their password replaced."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact_url"]


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
