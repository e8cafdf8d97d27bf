"""OpenAI's wire shapes: Chat Completions, Responses and Embeddings answers (whole or streamed as
SSE), and its error objects and headers."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Sequence
from typing import Any

from ._answer import JSON_TYPE, SSE_TYPE, Answer, Wire, compact, make_id, sse
from ._wire import LlmRequest

__all__ = ["ERRORS", "answer", "embedding_vector", "error", "headers"]

# status -> (type, code, message) as OpenAI words them
ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "rate_limit": (429, "requests", "rate_limit_exceeded", "Rate limit reached."),
    "server": (500, "server_error", None, "The server had an error while processing your request. Sorry about that!"),
    "unavailable": (503, "server_error", "service_unavailable", "The server is overloaded or not ready yet."),
    "overloaded": (529, "server_error", "overloaded", "The engine is currently overloaded, please try again later."),
    "invalid_request": (400, "invalid_request_error", None, "Invalid request."),
    "auth": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    "not_found": (404, "invalid_request_error", "unknown_url", "Unknown request URL."),
}


def headers(request_index: int, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    return (
        ("x-request-id", make_id("req_", request_index, "openai")),
        ("openai-organization", "isolated-env"),
        ("openai-processing-ms", "1"),
        ("openai-version", "2020-10-01"),
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
    """An OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    default_status, kind_type, code, default_message = ERRORS[kind]
    body = {
        "error": {"message": _text(message or default_message, detail), "type": kind_type, "param": None, "code": code}
    }
    return Wire(status or default_status, (("content-type", JSON_TYPE), *headers(index, extra)), compact(body).encode())


def _usage_chat(a: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": a.input_tokens,
        "completion_tokens": a.output_tokens,
        "total_tokens": a.input_tokens + a.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat(a: Answer, request: LlmRequest, extra: Sequence[tuple[str, str]]) -> Wire:
    cid, created = make_id("chatcmpl-", a.index), int(time.time())
    finish = a.stop or ("tool_calls" if a.tool_calls else "stop")
    calls: list[dict[str, Any]] = [
        {
            "id": c.id or make_id("call_", a.index, str(n)),
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments_json()},
        }
        for n, c in enumerate(a.tool_calls)
    ]
    head = {"id": cid, "object": "chat.completion", "created": created, "model": a.model}
    if not request.stream:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": a.text if a.text or not calls else None,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        body = {
            **head,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": _usage_chat(a),
            "service_tier": "default",
            "system_fingerprint": "fp_isolated",
        }
        return Wire(
            200,
            (("content-type", JSON_TYPE), *headers(a.index, extra)),
            compact(body).encode(),
            input_tokens=a.input_tokens,
            output_tokens=a.output_tokens,
        )
    head = {**head, "object": "chat.completion.chunk", "service_tier": "default", "system_fingerprint": "fp_isolated"}
    usage = {"usage": None} if request.include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice], **usage})

    frames = [chunk({"role": "assistant", "content": "" if not calls else None, "refusal": None})]
    frames += [chunk({"content": piece}) for piece in a.chunks]
    for n, call in enumerate(calls):
        start = {
            "index": n,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        frames.append(chunk({"tool_calls": [start]}))
        for piece in _pieces(call["function"]["arguments"]):
            frames.append(chunk({"tool_calls": [{"index": n, "function": {"arguments": piece}}]}))
    frames.append(chunk({}, finish))
    if request.include_usage:
        frames.append(sse({**head, "choices": [], "usage": _usage_chat(a)}))
    frames.append(b"data: [DONE]\n\n")
    known = request.include_usage
    return Wire(
        200,
        (("content-type", SSE_TYPE), *headers(a.index, extra)),
        frames=tuple(frames),
        input_tokens=a.input_tokens if known else None,
        output_tokens=a.output_tokens if known else None,
    )


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _response_object(a: Answer, request: LlmRequest, status: str, output: list[Any]) -> dict[str, Any]:
    data = request.json if isinstance(request.json, dict) else {}
    return {
        "id": make_id("resp_", a.index),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": data.get("instructions"),
        "max_output_tokens": data.get("max_output_tokens"),
        "model": a.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": data.get("tools", []),
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None
        if status != "completed"
        else {
            "input_tokens": a.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": a.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": a.input_tokens + a.output_tokens,
        },
        "user": None,
        "metadata": {},
    }


def _responses(a: Answer, request: LlmRequest, extra: Sequence[tuple[str, str]]) -> Wire:
    mid = make_id("msg_", a.index)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": a.text}
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    }
    calls: list[dict[str, Any]] = [
        {
            "id": make_id("fc_", a.index, str(n)),
            "type": "function_call",
            "status": "completed",
            "call_id": c.id or make_id("call_", a.index, str(n)),
            "name": c.name,
            "arguments": c.arguments_json(),
        }
        for n, c in enumerate(a.tool_calls)
    ]
    output = ([message] if a.text or not calls else []) + calls
    if not request.stream:
        body = _response_object(a, request, "completed", output)
        return Wire(
            200,
            (("content-type", JSON_TYPE), *headers(a.index, extra)),
            compact(body).encode(),
            input_tokens=a.input_tokens,
            output_tokens=a.output_tokens,
        )
    seq = iter(range(1_000_000))
    frames: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        frames.append(sse({"type": kind, "sequence_number": next(seq), **fields}, kind))

    emit("response.created", response=_response_object(a, request, "in_progress", []))
    emit("response.in_progress", response=_response_object(a, request, "in_progress", []))
    for out_index, item in enumerate(output):
        if item["type"] == "message":
            emit(
                "response.output_item.added",
                output_index=out_index,
                item={**item, "status": "in_progress", "content": []},
            )
            where = {"item_id": mid, "output_index": out_index, "content_index": 0}
            emit("response.content_part.added", **where, part={**part, "text": ""})
            for piece in a.chunks:
                emit("response.output_text.delta", **where, delta=piece, logprobs=[])
            emit("response.output_text.done", **where, text=a.text, logprobs=[])
            emit("response.content_part.done", **where, part=part)
        else:
            emit(
                "response.output_item.added",
                output_index=out_index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in _pieces(item["arguments"]):
                emit("response.function_call_arguments.delta", item_id=item["id"], output_index=out_index, delta=piece)
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=out_index,
                name=item["name"],
                arguments=item["arguments"],
            )
        emit("response.output_item.done", output_index=out_index, item=item)
    emit("response.completed", response=_response_object(a, request, "completed", output))
    return Wire(
        200,
        (("content-type", SSE_TYPE), *headers(a.index, extra)),
        frames=tuple(frames),
        input_tokens=a.input_tokens,
        output_tokens=a.output_tokens,
    )


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text`` (the same text, the same vector, in every run)."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 8) for v in values]


def _embeddings(
    a: Answer, request: LlmRequest, vectors: list[list[float]] | None, extra: Sequence[tuple[str, str]]
) -> Wire:
    data = request.json if isinstance(request.json, dict) else {}
    given = data.get("input")
    inputs = [given] if isinstance(given, str) or (given and isinstance(given[0], int)) else list(given or [])
    size = data["dimensions"] if isinstance(data.get("dimensions"), int) else 1536
    rows = vectors or [embedding_vector(compact(item), size) for item in inputs]
    as_base64 = data.get("encoding_format") == "base64"

    def encode(vector: list[float]) -> Any:
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector

    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": n, "embedding": encode(v)} for n, v in enumerate(rows)],
        "model": a.model,
        "usage": {"prompt_tokens": a.input_tokens, "total_tokens": a.input_tokens},
    }
    return Wire(
        200,
        (("content-type", JSON_TYPE), *headers(a.index, extra)),
        compact(body).encode(),
        input_tokens=a.input_tokens,
        output_tokens=0,
    )


def answer(
    a: Answer, request: LlmRequest, extra: Sequence[tuple[str, str]] = (), vectors: list[list[float]] | None = None
) -> Wire:
    """``a`` in the shape of the OpenAI API ``request`` called."""
    if request.api == "responses":
        return _responses(a, request, extra)
    if request.api == "embeddings":
        return _embeddings(a, request, vectors, extra)
    return _chat(a, request, extra)


def _text(message: str, detail: str | None) -> str:
    return f"{message} ({detail})" if detail else message
