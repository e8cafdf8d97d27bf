"""What a resource does when the embedded server under its test died: one clear error for the
test, and nothing of the dead server (pools, idle connections, background refills) kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import ServerDied
from .._runtime import current_runtime
from .._servers._provider import provider, server_died

__all__ = ["died", "watch"]


def watch(kind: str, token: Callable[[Any], str], also: Callable[[Any], None] | None = None) -> None:
    """When ``kind``'s embedded server is found dead between tests, drop this event loop's pools and
    objects filed under ``token(server)`` (and call ``also(server)``)."""

    async def forget(server: Any) -> None:
        if also is not None:
            also(server)
        await (await current_runtime()).drop(token(server))

    provider(kind).embedded.on_death(forget)


async def died(kind: str, server: Any, token: str) -> ServerDied | None:
    """The :class:`ServerDied` for a test on ``server`` when it died, after dropping this event
    loop's pools and objects filed under ``token`` (the key part that names that server)."""
    error = server_died(kind, server)
    if error is not None:
        await (await current_runtime()).drop(token)
    return error
