"""WsExpectation: ``count`` messages of a type that must reach an isolated_ws server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._inprocess import preview

if TYPE_CHECKING:
    from .ws import WebSocketHandle

__all__ = ["WsExpectation"]


class WsExpectation:
    """``count`` messages of ``type`` must reach the server (checked by ``check()`` and on exit)."""

    def __init__(self, handle: WebSocketHandle, type: str, count: int) -> None:
        self.type = type
        self.count = count
        self._handle = handle

    def __repr__(self) -> str:
        return f"<WsExpectation {self.type!r} x{self.count}, received {len(self.messages)}>"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The messages of this type the server has received so far (since the last reset)."""
        return [m for m in self._handle.received if isinstance(m, dict) and m.get("type") == self.type]

    @property
    def met(self) -> bool:
        return len(self.messages) == self.count

    async def wait(self, timeout: float = 5.0) -> list[dict[str, Any]]:  # noqa: ASYNC109 - the documented API
        """Wait until at least ``count`` messages of this type have arrived; returns them."""
        if not await self._handle._pulse.wait_until(lambda: len(self.messages) >= self.count, timeout):
            raise TimeoutError(
                f"expected {self.count} {self.type!r} message(s) within {timeout:g} s, the server "
                f"received {len(self.messages)}; everything it received: {preview(self._handle.received, 500)}"
            )
        return self.messages
