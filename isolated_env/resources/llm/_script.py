"""The offline script: responses a test declares with ``llm.respond(...)``, matched in order like
``isolated_http`` expectations, and the faults it schedules with ``llm.fail(...)``.

A request is answered by the first scripted response that matches it and has uses left; one that
matches none gets the provider's error and is recorded for ``check()``, with the reasons each
response did not match. A fault hits the calls its schedule names (1-based call indexes, or a
seeded probability), whatever the script says.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from ..._errors import ConfigError
from .._inprocess import Problem, preview
from ._answer import ToolCall
from ._wire import LlmRequest

__all__ = ["Fault", "Match", "ScriptedResponse", "make_fault", "tool_calls_of"]

Match: TypeAlias = Callable[[LlmRequest], bool] | str | re.Pattern[str] | Mapping[str, Any] | None
"""What a scripted response answers: a predicate, a substring or regex of the last user message,
or a mapping of ``model``/``api``/``text``/``tools``/``stream`` to required values."""

_MATCH_KEYS = {"model", "api", "text", "tools", "stream"}


def tool_calls_of(given: Iterable[Any] | None) -> tuple[ToolCall, ...]:
    calls = []
    for item in given or ():
        if isinstance(item, ToolCall):
            calls.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            args = item.get("arguments", {})
            if not isinstance(args, Mapping):
                raise ConfigError(f"tool_calls: the arguments of {item['name']!r} must be a dict, not {args!r}")
            calls.append(ToolCall(item["name"], dict(args), str(item.get("id", ""))))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Mapping):
            calls.append(ToolCall(item[0], dict(item[1])))
        else:
            raise ConfigError(
                f"tool_calls: {item!r} is not a tool call; give {{'name': 'get_weather', 'arguments': {{...}}}} "
                "or ('get_weather', {...})"
            )
    return tuple(calls)


def _split(text: str) -> tuple[str, ...]:
    """Text as a model streams it: word by word, each piece with the space before it."""
    return tuple(re.findall(r"\s*\S+|\s+", text)) or ("",)


def _matches_text(pattern: str | re.Pattern[str], text: str) -> bool:
    return pattern in text if isinstance(pattern, str) else pattern.search(text) is not None


class ScriptedResponse:
    """One answer the offline server gives, to the requests ``match`` accepts, ``times`` times."""

    def __init__(
        self,
        *,
        text: str | None,
        match: Match,
        tool_calls: Iterable[Any] | None,
        chunks: Sequence[str] | None,
        usage: Mapping[str, int] | None,
        times: int | None,
        model: str | None,
        embedding: Sequence[float] | Sequence[Sequence[float]] | None,
        stop: str | None,
    ) -> None:
        if chunks is not None:
            if isinstance(chunks, str) or not all(isinstance(c, str) for c in chunks):
                raise ConfigError("chunks: give a list of strings, the pieces the text is streamed in")
            if text is not None and "".join(chunks) != text:
                raise ConfigError(f"chunks join to {''.join(chunks)!r}, not to text={text!r}; give one of them")
            text = "".join(chunks)
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise ConfigError(f"times={times!r}: give a whole number >= 1, or None for any number of requests")
        if isinstance(match, Mapping) and set(match) - _MATCH_KEYS:
            raise ConfigError(f"match: unknown key(s) {sorted(set(match) - _MATCH_KEYS)}; known: {sorted(_MATCH_KEYS)}")
        if match is not None and not (callable(match) or isinstance(match, (str, re.Pattern, Mapping))):
            raise ConfigError(f"match={match!r}: give a function of the request, a str, a re.Pattern or a dict")
        self.text = text or ""
        self.chunks = tuple(chunks) if chunks is not None else _split(self.text)
        self.tool_calls = tool_calls_of(tool_calls)
        self.match = match
        self.times = times
        self.model = model
        self.stop = stop
        self.usage = self._usage(usage)
        self.embedding = self._vectors(embedding)
        self.requests: list[LlmRequest] = []
        """The requests this response answered, in order."""

    @staticmethod
    def _usage(usage: Mapping[str, int] | None) -> tuple[int | None, int | None]:
        if usage is None:
            return None, None
        known = {"input_tokens", "output_tokens", "prompt_tokens", "completion_tokens"}
        if not isinstance(usage, Mapping) or set(usage) - known:
            raise ConfigError(f"usage={usage!r}: give {{'input_tokens': n, 'output_tokens': m}}")
        return usage.get("input_tokens", usage.get("prompt_tokens")), usage.get(
            "output_tokens", usage.get("completion_tokens")
        )

    @staticmethod
    def _vectors(embedding: Any) -> list[list[float]] | None:
        if embedding is None:
            return None
        rows = [embedding] if embedding and isinstance(embedding[0], (int, float)) else embedding
        return [[float(x) for x in row] for row in rows]

    def __repr__(self) -> str:
        return f"<ScriptedResponse {self.describe()} used {len(self.requests)}/{self.times or 'any'}>"

    def describe(self) -> str:
        names = ", ".join(c.name for c in self.tool_calls)
        what = f"tool call(s) {names}" if self.tool_calls else preview(self.text, 60)
        if self.match is None:
            return f"respond({what})"
        how = getattr(self.match, "__name__", None) if callable(self.match) else None
        return f"respond({what}, match={how or preview(self.match, 60)})"

    @property
    def exhausted(self) -> bool:
        return self.times is not None and len(self.requests) >= self.times

    def mismatches(self, request: LlmRequest) -> list[str]:
        """Why ``request`` is not for this response; empty when it is."""
        match = self.match
        if request.api == "embeddings" and self.embedding is None:
            return ["it answers chat, not embeddings (give embedding=...)"]
        if request.api != "embeddings" and self.embedding is not None:
            return [f"it answers embeddings, not {request.api}"]
        if match is None:
            return []
        if isinstance(match, (str, re.Pattern)):
            return (
                []
                if _matches_text(match, request.text)
                else [f"the last user message {preview(request.text, 80)} does not contain {preview(match, 60)}"]
            )
        if isinstance(match, Mapping):
            reasons = []
            for key, want in match.items():
                if key == "text":
                    if not _matches_text(want, request.text):
                        reasons.append(f"text {preview(request.text, 80)} does not contain {preview(want, 60)}")
                elif key == "tools":
                    missing = [t for t in ([want] if isinstance(want, str) else want) if t not in request.tools]
                    if missing:
                        reasons.append(f"tools {list(request.tools)} lack {missing}")
                else:
                    got = getattr(request, key)
                    ok = want.fullmatch(got) is not None if isinstance(want, re.Pattern) else got == want
                    if not ok:
                        reasons.append(f"{key} {got!r} != {want!r}")
            return reasons
        try:
            ok = bool(match(request))
        except Exception as exc:  # the test's predicate: its error is the reason it did not match
            return [f"match predicate raised {type(exc).__name__}: {exc}"]
        return [] if ok else [f"match predicate {getattr(match, '__name__', '')} returned False"]

    def unmet(self) -> Problem | None:
        want = self.times or 1
        if len(self.requests) >= want:
            return None
        return Problem(
            f"scripted {self.describe()} answered {len(self.requests)} of "
            f"{self.times if self.times else 'at least 1'} request(s)"
        )


FaultKind = Literal["status", "drop", "stall", "disconnect", "first_byte", "malformed", "connect"]
_STATUS_KINDS = {429: "rate_limit", 500: "server", 503: "unavailable", 529: "overloaded"}


@dataclasses.dataclass(eq=False)
class Fault:
    """One scheduled fault, and the calls it hit (``hits``, 1-based call indexes)."""

    kind: FaultKind
    status: int | None = None
    retry_after: float | None = None
    message: str | None = None
    after_chunk: int = 0
    seconds: float = 0.0
    on_calls: frozenset[int] | None = None
    probability: float | None = None
    seed: int = 0
    hits: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def error_kind(self) -> str:
        return _STATUS_KINDS.get(self.status or 500, "server")

    def retry_header(self) -> list[tuple[str, str]]:
        """The ``retry-after`` header of this fault's error (none without ``retry_after``)."""
        if self.retry_after is None:
            return []
        seconds = float(self.retry_after)
        return [("retry-after", str(int(seconds)) if seconds.is_integer() else repr(seconds))]

    def applies(self, index: int) -> bool:
        """Whether call ``index`` is hit (a seeded draw per call, so the same seed hits the same calls)."""
        if self.on_calls is not None:
            hit = index in self.on_calls
        elif self.probability is not None:
            hit = self._rng.random() < self.probability
        else:
            hit = True
        if hit:
            self.hits.append(index)
        return hit

    def describe(self) -> str:
        if self.kind in ("status", "drop"):
            what = str(self.status or "drop")
        elif self.kind in ("first_byte", "connect"):
            what = f"{self.kind} delay {self.seconds:g} s"
        else:
            what = f"{self.kind} after chunk {self.after_chunk}"
        when = (
            f"calls {sorted(self.on_calls)}"
            if self.on_calls is not None
            else f"p={self.probability} seed={self.seed}"
            if self.probability is not None
            else "every call"
        )
        return f"fail({what}, {when})"


def make_fault(
    *,
    status: int | None,
    on_calls: Iterable[int] | None,
    probability: float | None,
    seed: int,
    retry_after: float | None,
    message: str | None,
    stall_after: int | None,
    stall: float,
    disconnect_after: int | None,
    first_byte_delay: float | None,
    malformed_after: int | None,
    drop: bool,
    connect_delay: float | None = None,
) -> Fault:
    """The Fault ``llm.fail(...)`` asks for, its arguments checked."""
    kinds = {
        "status": status is not None,
        "stall": stall_after is not None,
        "disconnect": disconnect_after is not None,
        "malformed": malformed_after is not None,
        "first_byte": first_byte_delay is not None,
        "drop": drop,
        "connect": connect_delay is not None,
    }
    chosen = [k for k, on in kinds.items() if on]
    if len(chosen) != 1:
        raise ConfigError(
            "fail(): give exactly one fault: status=, stall_after=, disconnect_after=, "
            f"malformed_after=, first_byte_delay=, connect_delay= or drop=True (got {chosen or 'none'})"
        )
    if status is not None and not (isinstance(status, int) and 400 <= status <= 599):
        raise ConfigError(f"fail(status={status!r}): give an HTTP error status, e.g. 429, 500, 503 or 529")
    calls = None if on_calls is None else frozenset(on_calls)
    if calls is not None and any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in calls):
        raise ConfigError(f"fail(on_calls={on_calls!r}): give 1-based call indexes, e.g. on_calls=(2,)")
    if probability is not None and not 0 <= probability <= 1:
        raise ConfigError(f"fail(probability={probability!r}): give a probability between 0 and 1")
    delays = (("retry_after", retry_after), ("stall", stall), ("first_byte_delay", first_byte_delay),
              ("connect_delay", connect_delay))
    for name, value in delays:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigError(f"fail({name}={value!r}): give a number of seconds >= 0")
    after = next((v for v in (stall_after, disconnect_after, malformed_after) if v is not None), 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ConfigError(f"fail(): the chunk count {after!r} must be a whole number >= 0")
    fault = Fault(
        kind=chosen[0],  # type: ignore[arg-type]  # one of the keys of `kinds`
        status=status,
        retry_after=retry_after,
        message=message,
        after_chunk=after,
        seconds=float(next((d for d in (first_byte_delay, connect_delay) if d is not None), stall)),
        on_calls=calls,
        probability=probability,
        seed=seed,
    )
    return fault
