"""What a request to the LLM server is: which API, which model, streamed or not, and its prompt.

:func:`parse` reads an HTTP request (as the server received it) into an :class:`LlmRequest`; the
token estimates live here too, because they read the same prompt fields.

Token counting runs with no network and no tokenizer download, by two documented rules:

- **pre-flight (budgets, rate limits): an upper bound.** Byte-level BPE tokenizers (OpenAI's and
  Anthropic's) never produce more tokens than the text has UTF-8 bytes, so the prompt fields
  serialised as JSON, counted in bytes, are never fewer tokens than the provider will bill.
- **usage the offline server reports: a realistic estimate**, one token per four characters of the
  text (at least one), unless the scripted response gives ``usage=``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal

import httpx

from ..http._server import RecordedRequest

__all__ = ["API_PATHS", "Api", "LlmRequest", "estimate_tokens", "parse", "upper_bound_tokens"]

Api = Literal["chat", "responses", "embeddings", "messages", "count_tokens"]

API_PATHS: dict[str, Api] = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
}

_PROMPT_FIELDS = ("messages", "input", "instructions", "system", "tools", "functions", "tool_choice")


@dataclasses.dataclass(eq=False)
class LlmRequest:
    """One request as the LLM server received it, with what it asks for read out of it."""

    index: int
    """1-based: the n-th request this handle's server received (every API counts)."""
    api: Api | None
    """``chat``, ``responses``, ``embeddings``, ``messages`` (Anthropic), ``count_tokens``, or None
    for a path no API serves."""
    method: str
    path: str
    headers: httpx.Headers
    body: bytes
    json: Any
    """The parsed JSON body (``None`` if it was not JSON)."""
    model: str
    stream: bool
    include_usage: bool
    """OpenAI chat streams: ``stream_options.include_usage`` (Anthropic and Responses streams always
    carry usage)."""
    max_tokens: int | None
    """The output cap the request gives (``max_tokens``, ``max_completion_tokens`` or
    ``max_output_tokens``), None when it gives none."""
    text: str
    """The last user message's text (what ``respond(match="...")`` looks in)."""
    tools: tuple[str, ...]
    """The names of the tools the request offers."""
    status: int = 0
    """The status the server answered with (0 while it is being answered)."""

    @property
    def provider(self) -> Literal["openai", "anthropic"]:
        return "anthropic" if self.api in ("messages", "count_tokens") else "openai"

    def __repr__(self) -> str:
        what = self.api or self.path
        stream = " stream" if self.stream else ""
        return f"<LlmRequest #{self.index} {what} model={self.model!r}{stream} -> {self.status}>"


def parse(index: int, raw: RecordedRequest) -> LlmRequest:
    """Read ``raw`` into an :class:`LlmRequest` (never raises: a body that is not JSON has ``json=None``)."""
    try:
        body = json.loads(raw.body) if raw.body else None
    except ValueError:
        body = None
    data = body if isinstance(body, dict) else {}
    api = API_PATHS.get(raw.path.rstrip("/"))
    stream = data.get("stream") is True
    options = data.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    cap = next((data[k] for k in ("max_completion_tokens", "max_tokens", "max_output_tokens") if k in data), None)
    return LlmRequest(
        index=index,
        api=api,
        method=raw.method,
        path=raw.path,
        headers=raw.headers,
        body=raw.body,
        json=body,
        model=str(data.get("model", "")),
        stream=stream,
        include_usage=include_usage,
        max_tokens=cap if isinstance(cap, int) and not isinstance(cap, bool) else None,
        text=_last_user_text(api, data),
        tools=_tool_names(data),
    )


def _text_of(content: Any) -> str:
    """The text in a message's content: a string, or a list of parts/blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif "content" in part:  # an Anthropic tool_result block
                    parts.append(_text_of(part["content"]))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _last_user_text(api: Api | None, data: dict[str, Any]) -> str:
    if api == "embeddings":
        given = data.get("input")
        return given if isinstance(given, str) else "\n".join(x for x in given or [] if isinstance(x, str))
    items = data.get("messages") if api != "responses" else data.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("role", "user") == "user" and "content" in item:
            return _text_of(item["content"])
    return ""


def _tool_names(data: dict[str, Any]) -> tuple[str, ...]:
    names = []
    for tool in data.get("tools") or []:
        if isinstance(tool, dict):
            name = tool.get("name") or (tool.get("function") or {}).get("name")
            if isinstance(name, str):
                names.append(name)
    return tuple(names)


def upper_bound_tokens(request: LlmRequest) -> int:
    """Input tokens the provider cannot exceed: the UTF-8 bytes of the prompt fields as JSON."""
    data = request.json if isinstance(request.json, dict) else {}
    if request.api == "embeddings":
        fields: Any = data.get("input")
    else:
        fields = {k: data[k] for k in _PROMPT_FIELDS if k in data}
    return max(1, len(json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()))


def estimate_tokens(text: str) -> int:
    """A realistic token count of ``text`` for offline usage: one per four characters, at least one."""
    return max(1, math.ceil(len(text) / 4))


def prompt_text(request: LlmRequest) -> str:
    """All the text of the prompt (system, every message, instructions), for offline usage."""
    data = request.json if isinstance(request.json, dict) else {}
    parts = [_text_of(data.get("system")), _text_of(data.get("instructions"))]
    items = data.get("messages") if request.api != "responses" else data.get("input")
    if isinstance(items, str):
        parts.append(items)
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            parts.append(_text_of(item.get("content")))
            for call in item.get("tool_calls") or []:
                parts.append(json.dumps(call))
    if request.api == "embeddings":
        parts.append(request.text)
    return "\n".join(p for p in parts if p)
