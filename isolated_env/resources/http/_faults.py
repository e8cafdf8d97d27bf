"""Faults an expectation can inject instead of a plain answer: a delay, a dropped or reset
connection, a 5xx, a 429 with Retry-After, a body trickled out slowly.

The builders live here as a mixin of :class:`HttpExpectation`; the server executes what they ask
for (``Reply.drop``, ``Reply.chunk_size``), so a fault crosses a real socket like a real one would.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Self

import anyio

from ..._errors import ConfigError
from ._matching import HeadersArg
from ._server import Reply

__all__ = ["FaultMethods", "Faults"]


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a number of seconds >= 0")
    return float(value)


@dataclasses.dataclass
class Faults:
    """The timing faults of one expectation (the others are replies of their own)."""

    delay: float = 0.0
    chunks: tuple[int, float] | None = None
    """``(chunk_size, interval)`` for a slow body."""

    async def wait(self) -> None:
        """Before answering: the delay, if any (other requests are served meanwhile)."""
        if self.delay:
            await anyio.sleep(self.delay)

    def shape(self, reply: Reply) -> Reply:
        """``reply`` as it is to be sent: trickled out if a slow body was asked for."""
        if self.chunks is None:
            return reply
        return dataclasses.replace(reply, chunk_size=self.chunks[0], chunk_interval=self.chunks[1])


class FaultMethods:
    """The fault builders of an expectation; each returns the expectation."""

    _faults: Faults

    if TYPE_CHECKING:  # provided by HttpExpectation

        def respond(
            self,
            status: int = 200,
            body: bytes | str = b"",
            headers: HeadersArg = None,
            *,
            content_type: str | None = None,
        ) -> Self: ...

        def _set(self, reply: Reply) -> None: ...

    def delay(self, seconds: float) -> Self:
        """Wait ``seconds`` before answering (other requests are served meanwhile)."""
        self._faults.delay = _seconds("delay", seconds)
        return self

    def drop(self, *, reset: bool = False) -> Self:
        """Close the connection without answering (``reset=True``: abort it with a TCP RST)."""
        self._set(Reply(drop="reset" if reset else "close"))
        return self

    def fail(self, status: int = 500, body: str | None = None) -> Self:
        """Answer with a server error (any 5xx)."""
        if not 500 <= status <= 599:
            raise ConfigError(
                f"fail(status={status!r}): a server error is a 5xx status; use respond() otherwise"
            )
        return self.respond(status, body if body is not None else f"{status} (injected by isolated_http)")

    def rate_limit(self, retry_after: float = 1.0, *, status: int = 429) -> Self:
        """Answer ``429 Too Many Requests`` with ``Retry-After: <seconds>`` (fractions allowed)."""
        seconds = _seconds("retry_after", retry_after)
        value = str(int(seconds)) if seconds.is_integer() else repr(seconds)
        return self.respond(status, f"{status} (injected by isolated_http)", {"retry-after": value})

    def slow_body(self, *, chunk_size: int = 1, interval: float = 0.05) -> Self:
        """Send the body ``chunk_size`` bytes at a time, ``interval`` seconds apart."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"slow_body(chunk_size={chunk_size!r}): give a whole number of bytes >= 1")
        self._faults.chunks = (chunk_size, _seconds("interval", interval))
        return self
