"""Where answers come from when the mode is not ``offline``: a cassette (``replay``), the upstream
provider (``live``), or both (``record``, ``record_missing``).

``replay`` opens no connection at all: it has no HTTP client. The record modes forward a request to
the upstream (its key from ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``, put on the forwarded request
only, never written), read the answer as the raw writes it arrived in, store them, and send the
client those same writes: a stream write by write as it arrives (the client sees its first chunk
while the upstream is still answering), stored once it has ended. Usage for the budget is read
from the answer: the ``usage`` object, an OpenAI stream's ``include_usage`` chunk,
``response.completed``, or Anthropic's ``message_start`` and final ``message_delta``; none found
(or a stream cut short), the call counts as unknown.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from ..._errors import ConfigError, SecretInCassette
from ..._recording import Cassette, Interaction, canonical, clean_headers, key_of, make_interaction
from .._inprocess import Problem, ProblemLog
from ._answer import Wire
from ._offline import NO_RETRY, provider_error
from ._wire import LlmRequest

__all__ = ["MODES", "CassetteSource", "open_source", "usage_of"]

MODES = ("offline", "replay", "record", "record_missing", "live")
UPSTREAMS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_NOT_FORWARDED = frozenset({"host", "authorization", "x-api-key", "content-length", "connection", "accept-encoding"})


def _upstreams(upstream: Mapping[str, str] | str | None) -> dict[str, str]:
    if upstream is None:
        return dict(UPSTREAMS)
    if isinstance(upstream, str):
        return {"openai": upstream.rstrip("/"), "anthropic": upstream.rstrip("/").removesuffix("/v1")}
    unknown = set(upstream) - set(UPSTREAMS)
    if unknown:
        raise ConfigError(f"upstream: unknown provider(s) {sorted(unknown)}; give 'openai' and/or 'anthropic'")
    return {**UPSTREAMS, **{k: v.rstrip("/") for k, v in upstream.items()}}


def open_source(
    mode: str, cassette: Any, timing: str, upstream: Mapping[str, str] | str | None
) -> CassetteSource | None:
    if timing not in ("fast", "recorded"):
        raise ConfigError(f"isolated_llm(timing={timing!r}): give 'fast' (as fast as possible) or 'recorded'")
    if mode == "offline":
        if cassette is not None:
            raise ConfigError(
                "isolated_llm(cassette=...) is for the replay and record modes; offline answers from llm.respond(...)"
            )
        return None
    if mode == "live":
        if cassette is not None:
            raise ConfigError("isolated_llm(mode='live') writes no cassette; use mode='record' to keep one")
        return CassetteSource(mode, None, timing, _upstreams(upstream))
    if cassette is None:
        raise ConfigError(f"isolated_llm(mode={mode!r}) needs cassette=<path of the recording>")
    loaded = (
        Cassette.load(cassette, must_exist=mode == "replay")
        if mode != "record"
        else Cassette(Path(cassette), [])  # record starts afresh: what the file held is replaced
    )
    return CassetteSource(mode, loaded, timing, _upstreams(upstream))


def _pick(usage: Any, pairs: Sequence[tuple[str, str]]) -> tuple[int | None, int | None]:
    if isinstance(usage, dict):
        for tokens_in, tokens_out in pairs:
            if isinstance(usage.get(tokens_in), int):
                out = usage.get(tokens_out, 0)
                return usage[tokens_in], out if isinstance(out, int) else 0
    return None, None


_PAIRS = (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens"))


def usage_of(item: Interaction) -> tuple[int | None, int | None]:
    """The tokens an answer reports using (None, None when it reports none)."""
    if not any(k == "content-type" and "event-stream" in v for k, v in item.headers):
        try:
            return _pick(json.loads(item.body).get("usage"), _PAIRS)
        except (ValueError, AttributeError):
            return None, None
    tokens_in = tokens_out = None
    for event in item.events():
        data = event["data"]
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if kind == "message_start":  # Anthropic: input first, output in the final message_delta
            tokens_in, _ = _pick(data.get("message", {}).get("usage"), _PAIRS)
        elif kind == "message_delta" and isinstance((data.get("usage") or {}).get("output_tokens"), int):
            tokens_out = data["usage"]["output_tokens"]
        elif kind == "response.completed":
            tokens_in, tokens_out = _pick(data.get("response", {}).get("usage"), _PAIRS)
        elif data.get("usage"):
            tokens_in, tokens_out = _pick(data["usage"], _PAIRS)
    return (tokens_in, tokens_out) if tokens_in is not None and tokens_out is not None else (None, None)


Settle = Callable[[int | None, int | None], None]
"""Reconciles a call at the tokens it used (None, None: unknown)."""


class _Upstream:
    """An upstream answer whose head has arrived; its body is read by whoever takes it."""

    def __init__(self, request: LlmRequest, response: httpx.Response, started: float) -> None:
        self.request, self.response, self.started = request, response, started

    def interaction(self, writes: list[tuple[float, bytes]]) -> Interaction:
        r = self.request
        received = self.response.headers.multi_items()
        return make_interaction(
            r.method, r.path, "", r.headers.multi_items(), r.body, self.response.status_code, received, writes
        )


class CassetteSource:
    """Answers from a cassette and/or the upstream, as the mode says."""

    def __init__(self, mode: str, cassette: Cassette | None, timing: str, upstream: dict[str, str]) -> None:
        self.mode = mode
        self.cassette = cassette
        self.timing = timing
        self.upstream = upstream
        self._client: httpx.AsyncClient | None = None
        self._keys: set[str] = set()

    async def answer(
        self, request: LlmRequest, extra: Sequence[tuple[str, str]], problems: ProblemLog, settle: Settle
    ) -> tuple[Wire, list[float] | None]:
        """The answer to ``request``; one with ``settled_later`` calls ``settle`` with its usage once
        its stream has ended."""
        text = canonical(request.method, request.path, "", request.body)
        if self.cassette is not None and self.mode in ("replay", "record_missing"):
            found = self.cassette.take(key_of(text))
            if found is not None:
                return self._send(found, extra)
            if self.mode == "replay":
                why = f"no recorded interaction matches it ({self.cassette.path}); {self.cassette.nearest(text)}"
                problems.unexpected(f"request #{request.index} ({request.api}, {request.model})", why)
                return provider_error(request, "invalid_request", f"isolated_llm replay: {why}", NO_RETRY), None
        got = await self._forward(request, problems)
        if isinstance(got, Wire):
            return got, None
        if isinstance(got, _Upstream):
            return self._relay(request, got, extra, problems, settle), None
        if self.cassette is not None:
            got.used = True
            self.cassette.add(got)
        return self._send(got, extra, fast=True)

    def _relay(
        self,
        request: LlmRequest,
        upstream: _Upstream,
        extra: Sequence[tuple[str, str]],
        problems: ProblemLog,
        settle: Settle,
    ) -> Wire:
        """A stream passed on write by write as the upstream sends it, recorded as it goes: the
        interaction is stored, and usage reconciled, once it has ended."""
        response = upstream.response

        async def writes() -> AsyncIterator[bytes]:
            recorded: list[tuple[float, bytes]] = []
            complete = False
            try:
                async for piece in response.aiter_raw():
                    recorded.append(((time.perf_counter() - upstream.started) * 1000, piece))
                    yield piece
                complete = True
            except httpx.HTTPError as exc:
                why = f"the upstream stream broke after {len(recorded)} write(s): {exc!r}"
                problems.unexpected(f"request #{request.index} ({request.api}, {request.model})", why)
                raise ConnectionAbortedError(why) from exc
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                item = upstream.interaction(recorded) if complete else None
                if item is not None and self.cassette is not None:
                    item.used = True
                    self.cassette.add(item)
                # a stream cut short is not stored, and counts as unknown: its worst case stays charged
                settle(*(usage_of(item) if item is not None and item.status == 200 else (None, None)))

        headers = (*clean_headers(response.headers.multi_items()), *extra)
        return Wire(response.status_code, headers, frames=writes(), settled_later=True)

    def _send(
        self, item: Interaction, extra: Sequence[tuple[str, str]], fast: bool = False
    ) -> tuple[Wire, list[float] | None]:
        headers = (*item.headers, *extra)
        tokens_in, tokens_out = usage_of(item) if item.status == 200 else (None, None)
        streamed = any(k == "content-type" and "event-stream" in v for k, v in item.headers)
        if not streamed:
            return Wire(item.status, headers, item.body, input_tokens=tokens_in, output_tokens=tokens_out), None
        frames = tuple(data for _, data in item.writes)
        # timing="recorded": each write at its recorded offset from the start (absolute, so late
        # wake-ups do not add up along a long stream)
        marks = [at / 1000 for at, _ in item.writes] if self.timing == "recorded" and not fast else None
        return Wire(item.status, headers, frames=frames, input_tokens=tokens_in, output_tokens=tokens_out), marks

    async def _forward(self, request: LlmRequest, problems: ProblemLog) -> Interaction | Wire | _Upstream:
        provider = request.provider
        variable = KEY_VARIABLES[provider]
        key = os.environ.get(variable)
        what = f"request #{request.index} ({request.api}, {request.model})"
        if not key:
            why = f"mode={self.mode!r} forwards it to {provider}, and {variable} is not set"
            return provider_error(request, "auth", problems.unexpected(what, why), NO_RETRY)
        self._keys.add(key)
        url = self.upstream[provider] + (request.path.removeprefix("/v1") if provider == "openai" else request.path)
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _NOT_FORWARDED]
        headers += [
            ("accept-encoding", "identity"),
            ("authorization", f"Bearer {key}") if provider == "openai" else ("x-api-key", key),
        ]
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))
        started = time.perf_counter()
        try:
            upstream = self._client.build_request("POST", url, content=request.body, headers=headers)
            response = await self._client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            why = f"the upstream {url} could not be reached: {exc!r}"
            return provider_error(request, "unavailable", problems.unexpected(what, why), NO_RETRY)
        got = _Upstream(request, response, started)
        if response.status_code == 200 and "event-stream" in response.headers.get("content-type", ""):
            return got
        writes: list[tuple[float, bytes]] = []
        try:
            async for piece in response.aiter_raw():
                writes.append(((time.perf_counter() - started) * 1000, piece))
        except httpx.HTTPError as exc:
            why = f"the upstream {url} broke off its answer: {exc!r}"
            return provider_error(request, "unavailable", problems.unexpected(what, why), NO_RETRY)
        finally:
            await response.aclose()
        return got.interaction(writes)

    def unmet(self) -> list[Problem]:
        if self.cassette is None or self.mode not in ("replay", "record_missing"):
            return []
        return [Problem(message) for message in self.cassette.unused_messages()]

    async def aclose(self, problems: ProblemLog) -> None:
        try:
            if self.cassette is not None and self.cassette.added:
                try:
                    self.cassette.save(keep_existing=self.mode == "record_missing", known_secrets=self._keys)
                except SecretInCassette as exc:
                    problems.record(str(exc), exc)
        finally:
            if self._client is not None:
                await self._client.aclose()
