"""Whether a host name or address is this machine's loopback (no third-party import: the Redis
driver's retry policy and the HTTP network guard both ask)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """``localhost`` (and ``*.localhost``), an empty host, or a loopback address (``[::1]`` too)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.endswith(".localhost")
