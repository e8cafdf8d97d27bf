"""What the offline server answers, before it is put in a provider's shape: an :class:`Answer`
(text, tool calls, usage), and :class:`Wire`, the bytes to send (one body, or SSE frames).

The provider modules (``_openai``, ``_anthropic``) turn an Answer into a Wire; the handle decides
which Answer a request gets (a scripted response, an error, a recording).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncIterable
from typing import Any

__all__ = ["SSE_TYPE", "Answer", "ToolCall", "Wire", "compact", "make_id", "sse"]

SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One tool call in an answer: the tool's ``name`` and its ``arguments`` (a dict, sent as JSON)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""

    def arguments_json(self) -> str:
        return compact(self.arguments)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A model's reply in no provider's shape."""

    model: str
    text: str = ""
    chunks: tuple[str, ...] = ()
    """The text as streamed, piece by piece (joined, they are ``text``)."""
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    stop: str | None = None
    """The provider's stop/finish reason, when the script gives one; else derived."""
    index: int = 0
    """The call index, from which the response ids are made (so they are reproducible)."""


@dataclasses.dataclass(frozen=True)
class Wire:
    """An HTTP answer: status, headers, and either a body or the SSE frames of a stream."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    frames: tuple[bytes, ...] | AsyncIterable[bytes] | None = None
    """For a stream: each frame is written separately, in order (an iterable: as it comes)."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    """The usage the answer reports (None: it reports none, e.g. a stream without include_usage)."""
    settled_later: bool = False
    """The usage is known only once the stream has been sent (a stream relayed from upstream)."""

    @property
    def streamed(self) -> bool:
        return self.frames is not None


def compact(value: Any) -> str:
    """JSON as the providers send it: no spaces, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event frame (``event:`` line when named, then ``data:``)."""
    payload = data if isinstance(data, str) else compact(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def make_id(prefix: str, index: int, salt: str = "") -> str:
    """A reproducible id in a provider's style: ``prefix`` then 24 hex digits from the call index."""
    return prefix + hashlib.sha256(f"{index}:{salt}".encode()).hexdigest()[:24]
