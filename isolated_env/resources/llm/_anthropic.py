"""Anthropic's wire shapes: Messages answers (whole or streamed as named SSE events), token counts,
and its error objects and headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._answer import JSON_TYPE, SSE_TYPE, Answer, Wire, compact, make_id, sse
from ._wire import LlmRequest

__all__ = ["ERRORS", "answer", "count_tokens", "error", "headers"]

ERRORS: dict[str, tuple[int, str, str]] = {
    # Anthropic answers an exhausted credit balance with a 400 invalid_request_error, worded so
    "insufficient_quota": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits.",
    ),
    "rate_limit": (429, "rate_limit_error", "Number of requests has exceeded your rate limit."),
    "server": (500, "api_error", "Internal server error"),
    "unavailable": (503, "api_error", "Service unavailable"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "invalid_request": (400, "invalid_request_error", "Invalid request."),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "not_found": (404, "not_found_error", "Not found"),
}


def headers(index: int, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    return (
        ("request-id", make_id("req_", index, "anthropic")),
        ("anthropic-organization-id", "00000000-0000-4000-8000-000000000000"),
        *extra,
    )


def error(
    kind: str,
    message: str | None,
    index: int,
    extra: Sequence[tuple[str, str]] = (),
    *,
    status: int | None = None,
    detail: str | None = None,
) -> Wire:
    """Anthropic's error object: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    default_status, kind_type, default_message = ERRORS[kind]
    body = {
        "type": "error",
        "error": {"type": kind_type, "message": _text(message or default_message, detail)},
        "request_id": make_id("req_", index, "anthropic"),
    }
    return Wire(status or default_status, (("content-type", JSON_TYPE), *headers(index, extra)), compact(body).encode())


def _usage(a: Answer, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": a.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _blocks(a: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": a.text}] if a.text or not a.tool_calls else []
    for n, call in enumerate(a.tool_calls):
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id or make_id("toolu_", a.index, str(n)),
                "name": call.name,
                "input": call.arguments,
            }
        )
    return blocks


def answer(a: Answer, request: LlmRequest, extra: Sequence[tuple[str, str]] = ()) -> Wire:
    """``a`` as a Messages API answer: one message object, or its stream of events."""
    stop = a.stop or ("tool_use" if a.tool_calls else "end_turn")
    blocks = _blocks(a)
    message: dict[str, Any] = {
        "id": make_id("msg_", a.index),
        "type": "message",
        "role": "assistant",
        "model": a.model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(a, a.output_tokens),
    }
    if not request.stream:
        return Wire(
            200,
            (("content-type", JSON_TYPE), *headers(a.index, extra)),
            compact(message).encode(),
            input_tokens=a.input_tokens,
            output_tokens=a.output_tokens,
        )
    frames = [
        sse(
            {
                "type": "message_start",
                "message": {**message, "content": [], "stop_reason": None, "usage": _usage(a, 1)},
            },
            "message_start",
        )
    ]
    for n, block in enumerate(blocks):
        if block["type"] == "text":
            frames.append(
                sse(
                    {"type": "content_block_start", "index": n, "content_block": {"type": "text", "text": ""}},
                    "content_block_start",
                )
            )
            if n == 0:
                frames.append(sse({"type": "ping"}, "ping"))
            for piece in a.chunks:
                frames.append(
                    sse(
                        {"type": "content_block_delta", "index": n, "delta": {"type": "text_delta", "text": piece}},
                        "content_block_delta",
                    )
                )
        else:
            frames.append(
                sse(
                    {"type": "content_block_start", "index": n, "content_block": {**block, "input": {}}},
                    "content_block_start",
                )
            )
            arguments = compact(block["input"])
            for i in range(0, len(arguments), 8):
                frames.append(
                    sse(
                        {
                            "type": "content_block_delta",
                            "index": n,
                            "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 8]},
                        },
                        "content_block_delta",
                    )
                )
        frames.append(sse({"type": "content_block_stop", "index": n}, "content_block_stop"))
    frames.append(
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": a.output_tokens},
            },
            "message_delta",
        )
    )
    frames.append(sse({"type": "message_stop"}, "message_stop"))
    return Wire(
        200,
        (("content-type", SSE_TYPE), *headers(a.index, extra)),
        frames=tuple(frames),
        input_tokens=a.input_tokens,
        output_tokens=a.output_tokens,
    )


def count_tokens(input_tokens: int, index: int, extra: Sequence[tuple[str, str]] = ()) -> Wire:
    return Wire(
        200, (("content-type", JSON_TYPE), *headers(index, extra)), compact({"input_tokens": input_tokens}).encode()
    )


def _text(message: str, detail: str | None) -> str:
    return f"{message} ({detail})" if detail else message
