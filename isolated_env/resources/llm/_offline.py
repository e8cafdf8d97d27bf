"""How the offline server answers a request: the first scripted response that takes it, in the
shape of the API it called, or the provider's error saying why none did."""

from __future__ import annotations

from collections.abc import Sequence

from ._answer import Answer, Wire
from ._anthropic import answer as anthropic_answer
from ._anthropic import error as anthropic_error
from ._openai import answer as openai_answer
from ._openai import error as openai_error
from ._script import ScriptedResponse
from ._wire import LlmRequest, estimate_tokens, prompt_text

__all__ = ["NO_RETRY", "answer_of", "offline_answer", "provider_error"]

NO_RETRY = (("x-should-retry", "false"),)
"""Tells the SDKs not to retry an answer that would come out the same (a refusal, a bad request)."""


def provider_error(
    request: LlmRequest,
    kind: str,
    message: str | None,
    extra: Sequence[tuple[str, str]] = (),
    status: int | None = None,
    detail: str | None = None,
) -> Wire:
    """The error ``kind`` in the shape of the provider ``request`` called: ``message`` (or the
    provider's own words), then ``detail`` in parentheses."""
    make = anthropic_error if request.provider == "anthropic" else openai_error
    return make(kind, message, request.index, extra, status=status, detail=detail)


def offline_answer(
    request: LlmRequest, script: Sequence[ScriptedResponse], extra: Sequence[tuple[str, str]]
) -> tuple[Wire, str | None]:
    """The answer to ``request``, and why nothing matched it (None when something did)."""
    reasons: list[tuple[ScriptedResponse, list[str]]] = []
    for scripted in script:
        mismatches = scripted.mismatches(request)
        if not mismatches and not scripted.exhausted:
            break
        reasons.append((scripted, mismatches))
    else:
        if request.api == "embeddings":  # no script needed: a deterministic vector per input
            return openai_answer(answer_of(request, None), request, extra), None
        why = _unmatched(request, reasons)
        message = f"isolated_llm: request #{request.index} ({request.api}, {request.model}): {why}"
        return provider_error(request, "invalid_request", message, [*extra, *NO_RETRY]), why
    scripted.requests.append(request)
    answer = answer_of(request, scripted)
    if request.provider == "anthropic":
        return anthropic_answer(answer, request, extra), None
    return openai_answer(answer, request, extra, scripted.embedding), None


def answer_of(request: LlmRequest, scripted: ScriptedResponse | None) -> Answer:
    """The Answer ``scripted`` gives ``request``: its usage as scripted, else estimated."""
    given_in, given_out = scripted.usage if scripted is not None else (None, None)
    text = scripted.text if scripted is not None else ""
    calls = scripted.tool_calls if scripted is not None else ()
    produced = text + "".join(c.name + c.arguments_json() for c in calls)
    if request.api == "embeddings":
        output = 0
    else:
        output = given_out if given_out is not None else estimate_tokens(produced)
    return Answer(
        model=(scripted.model if scripted is not None else None) or request.model,
        text=text,
        chunks=scripted.chunks if scripted is not None else (),
        tool_calls=calls,
        input_tokens=given_in if given_in is not None else estimate_tokens(prompt_text(request)),
        output_tokens=output,
        stop=scripted.stop if scripted is not None else None,
        index=request.index,
    )


def _unmatched(request: LlmRequest, reasons: list[tuple[ScriptedResponse, list[str]]]) -> str:
    head = f"no scripted response matches it (last user message: {request.text[:200]!r}; answered 400)"
    if not reasons:
        return head + "; nothing was scripted: add llm.respond(...)"
    lines = [head + "; the scripted responses:"]
    for scripted, mismatches in reasons[:5]:
        why = "; ".join(mismatches) if mismatches else f"all {scripted.times} use(s) taken"
        lines.append(f"  - {scripted.describe()}: {why}")
    return "\n".join(lines)
