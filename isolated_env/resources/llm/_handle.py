"""LlmHandle and isolated_llm(): a per-test OpenAI- and Anthropic-compatible server, its script,
faults, budget and rate limits, and the journal of what it received.

Every request goes through the same gate, in this order: an API path and this server's key; the
request cap and the budget (a refused call is not answered by any model, and reaches no upstream);
the rate limit; a scheduled fault; then the answer (the offline script, or a cassette / upstream).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import anyio

from ..._config import Settings
from ..._errors import ConfigError, MissingDependencyError
from ..._resource import resource
from .._inprocess import InProcessHandle, Problem, serving
from ..http._server import RecordedRequest, Reply
from ._answer import Wire
from ._anthropic import count_tokens
from ._budget import LlmBudget, LlmUsage, Meter, Prices
from ._connect import require_support
from ._offline import NO_RETRY, offline_answer, provider_error
from ._ratelimit import Buckets, RateLimit, limit
from ._script import Fault, Match, ScriptedResponse, make_fault
from ._server import LlmServer, lease_server, to_reply
from ._sources import MODES, CassetteSource, open_source
from ._wire import LlmRequest, estimate_tokens, parse, prompt_text

__all__ = ["LlmHandle", "isolated_llm"]


class LlmHandle(InProcessHandle):
    """A live LLM server for one test: where to reach it (``base_url``, ``anthropic_base_url``,
    ``api_key``, ``env``), SDK clients bound to it, its script (``respond``) and faults (``fail``),
    and what it saw (``requests``, ``usage``, ``check()``)."""

    def __init__(self, *, mode: str, meter: Meter, buckets: Buckets, source: CassetteSource | None) -> None:
        super().__init__("isolated_llm")
        self.mode = mode
        self.api_key = "ie-" + secrets.token_hex(16)
        """A key valid for this server only, for this test only."""
        self.base_url = ""
        """The OpenAI-compatible root, ``http://127.0.0.1:<port>/v1``."""
        self.anthropic_base_url = ""
        """The Anthropic-compatible root on the same server, ``http://127.0.0.1:<port>``."""
        self.requests: list[LlmRequest] = []
        """The journal: every request the server received, in arrival order, answered or not."""
        self._meter = meter
        self._buckets = buckets
        self._source = source
        self._script: list[ScriptedResponse] = []
        self._faults: list[Fault] = []
        self._connect_faults: list[Fault] = []
        self._connect_decided = 0  # the last call index a connect fault was drawn for
        self._clients: list[Any] = []
        self._client: Any = None
        self._server: LlmServer | None = None

    def __repr__(self) -> str:
        return f"<LlmHandle {self.mode} {self.base_url} requests={len(self.requests)}>"

    # -- reaching it -------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point the OpenAI and Anthropic SDKs (and most tools built on
        them) at this server, for a subprocess: ``env={**os.environ, **llm.env}``."""
        return {
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_BASE": self.base_url,
            "OPENAI_API_KEY": self.api_key,
            "ANTHROPIC_BASE_URL": self.anthropic_base_url,
            "ANTHROPIC_API_KEY": self.api_key,
            "NO_PROXY": "127.0.0.1,localhost",
        }

    @property
    def client(self) -> Any:
        """An ``openai.AsyncOpenAI`` bound to this server, made on first use, closed on exit."""
        if self._client is None:
            self._client = self.openai()
        return self._client

    def openai(self, **options: Any) -> Any:
        """A new ``openai.AsyncOpenAI`` bound to this server (``options`` as the SDK takes them,
        e.g. ``max_retries=0``), closed on exit."""
        return self._sdk("openai", "AsyncOpenAI", self.base_url, options)

    def anthropic(self, **options: Any) -> Any:
        """A new ``anthropic.AsyncAnthropic`` bound to this server, closed on exit."""
        return self._sdk("anthropic", "AsyncAnthropic", self.anthropic_base_url, options)

    def _sdk(self, module: str, name: str, base_url: str, options: dict[str, Any]) -> Any:
        try:
            sdk = importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(module, "llm", f"isolated_llm's {name} client") from None
        client = getattr(sdk, name)(base_url=base_url, api_key=self.api_key, **options)
        self._clients.append(client)
        return client

    # -- the script and the faults -----------------------------------------------------------------

    def respond(
        self,
        text: str | None = None,
        *,
        match: Match = None,
        tool_calls: Iterable[Any] | None = None,
        chunks: Sequence[str] | None = None,
        usage: Mapping[str, int] | None = None,
        times: int | None = 1,
        model: str | None = None,
        embedding: Sequence[Any] | None = None,
        stop: str | None = None,
    ) -> ScriptedResponse:
        """Script an answer: ``text`` (streamed word by word, or in the given ``chunks``) and/or
        ``tool_calls`` (``[{"name": ..., "arguments": {...}}]``), for the requests ``match`` accepts
        (a predicate, a substring or regex of the last user message, or a dict of
        ``model``/``api``/``text``/``tools``/``stream``), ``times`` times (None: any number).
        ``usage`` sets the reported tokens (else estimated), ``embedding`` answers embeddings.
        Any API (Chat Completions, Responses, Anthropic Messages) gets it in its own shape."""
        scripted = ScriptedResponse(
            text=text,
            match=match,
            tool_calls=tool_calls,
            chunks=chunks,
            usage=usage,
            times=times,
            model=model,
            embedding=embedding,
            stop=stop,
        )
        self._script.append(scripted)
        return scripted

    def fail(
        self,
        status: int | None = None,
        *,
        on_calls: Iterable[int] | None = None,
        probability: float | None = None,
        seed: int = 0,
        retry_after: float | None = None,
        message: str | None = None,
        stall_after: int | None = None,
        stall: float = 30.0,
        disconnect_after: int | None = None,
        first_byte_delay: float | None = None,
        malformed_after: int | None = None,
        drop: bool = False,
        connect_delay: float | None = None,
    ) -> Fault:
        """Schedule a fault on the calls ``on_calls`` names (1-based, every API counts), or on each
        call with ``probability`` drawn from ``seed``, or on every call. One of: ``status``
        (429/500/503/529 in the provider's error shape, ``retry_after`` seconds), ``stall_after=k``
        (the body stops after k chunks for ``stall`` s: a read timeout), ``disconnect_after=k``,
        ``malformed_after=k`` (a broken SSE frame), ``first_byte_delay`` (headers late: a first-byte
        timeout), ``drop`` (the connection closes unanswered) or ``connect_delay`` (before call k
        the listener answers no new connection for that many seconds: a connect timeout; the
        connection that carried call k-1 is closed after it, so call k must connect anew)."""
        fault = make_fault(
            status=status,
            on_calls=on_calls,
            probability=probability,
            seed=seed,
            retry_after=retry_after,
            message=message,
            stall_after=stall_after,
            stall=stall,
            disconnect_after=disconnect_after,
            first_byte_delay=first_byte_delay,
            malformed_after=malformed_after,
            drop=drop,
            connect_delay=connect_delay,
        )
        if fault.kind == "connect":
            require_support()
            self._connect_faults.append(fault)
            self._shut_for_next_call()
        else:
            self._faults.append(fault)
        return fault

    # -- what it saw ---------------------------------------------------------------------------------

    @property
    def usage(self) -> LlmUsage:
        """Calls answered, tokens in and out, and USD (Decimal) spent so far by this test."""
        return self._meter.usage

    @property
    def scripted(self) -> list[ScriptedResponse]:
        return list(self._script)

    def check(self) -> None:
        """Raise what went wrong so far: BudgetExceeded / UnpricedModel for a refused or overspent
        call, else ResourceCheckFailed for unmatched requests, bad keys, unused scripted responses."""
        budget = self._meter.report()
        if budget is not None:
            others = self._problems.report()
            if others is not None:
                budget.add_note(str(others))
            raise budget
        super().check()

    def _unmet(self) -> list[Problem]:
        unmet = [p for p in (s.unmet() for s in self._script) if p is not None]
        return unmet + (self._source.unmet() if self._source is not None else [])

    # -- answering -----------------------------------------------------------------------------------

    def _authorized(self, request: LlmRequest) -> bool:
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        return secrets.compare_digest(given.encode(), self.api_key.encode())

    async def _answer(self, raw: RecordedRequest) -> Reply:
        request = parse(len(self.requests) + 1, raw)
        self.requests.append(request)
        self._pulse.notify()
        try:
            reply = await self._gate(request)
        except Exception as exc:  # a failure of ours: the test sees it, the client gets a 500
            self._meter.release(request)
            self._problems.record(f"isolated_llm failed answering {request!r}: {exc!r}", exc)
            reply = to_reply(provider_error(request, "server", f"isolated_llm failed: {exc!r}", NO_RETRY))
        request.status = reply.status
        if self._shut_for_next_call():  # the next call must connect anew, and find the listener shut
            reply = dataclasses.replace(reply, headers=[*reply.headers, ("connection", "close")])
        return reply

    def _shut_for_next_call(self) -> bool:
        """Shut the listener if a connect fault hits the next call (each call index is drawn once)."""
        upcoming = len(self.requests) + 1
        if not self._connect_faults or upcoming <= self._connect_decided or self._server is None:
            return False
        self._connect_decided = upcoming
        fault = next((f for f in self._connect_faults if f.applies(upcoming)), None)
        if fault is None or self._server.gate is None:
            return False
        self._server.gate.shut(fault.seconds)
        return True

    async def _gate(self, request: LlmRequest) -> Reply:
        if request.api is None or request.method != "POST":
            why = "no OpenAI or Anthropic API is served there (chat/completions, responses, embeddings, messages)"
            return self._unexpected(request, "not_found", why)
        if not self._authorized(request):
            why = "its API key is not this test's (use llm.api_key, llm.env or llm.client)"
            return self._unexpected(request, "auth", why)
        if not isinstance(request.json, dict) or not request.model:
            return self._unexpected(request, "invalid_request", "its body is not a JSON object naming a model")
        if request.api == "count_tokens":
            return to_reply(count_tokens(estimate_tokens(prompt_text(request)), request.index))
        refusal = self._meter.preflight(request)
        if refusal is not None:
            return to_reply(
                provider_error(request, "insufficient_quota", None, NO_RETRY, detail=f"isolated_llm: {refusal}")
            )
        extra = limit(self._buckets, request)
        if isinstance(extra, Wire):
            self._meter.release(request)
            self._meter.refused_elsewhere()
            return to_reply(extra)
        fault = next((f for f in self._faults if f.applies(request.index)), None)
        if fault is not None and fault.kind in ("status", "drop"):
            self._meter.release(request)
            if fault.kind == "drop":
                return Reply(drop="close")
            headers = [*extra, *fault.retry_header()]
            return to_reply(provider_error(request, fault.error_kind, fault.message, headers, fault.status))
        if fault is not None and fault.kind == "first_byte":
            await anyio.sleep(fault.seconds)
        wire, marks = await self._respond(request, extra)
        if wire.settled_later:
            pass  # reconciled as its stream ends
        elif wire.status == 200:
            self._meter.settle(request, wire.input_tokens, wire.output_tokens)
        else:
            self._meter.release(request)
        return to_reply(wire, fault, marks)

    def _unexpected(self, request: LlmRequest, kind: str, why: str) -> Reply:
        """The provider's error ``kind`` for a request this server must not answer, recorded for check()."""
        message = self._problems.unexpected(f"request #{request.index} {request.method} {request.path}", why)
        return to_reply(provider_error(request, kind, message, NO_RETRY))

    async def _respond(self, request: LlmRequest, extra: list[tuple[str, str]]) -> tuple[Wire, list[float] | None]:
        if self._source is not None:
            settle = functools.partial(self._meter.settle, request)
            return await self._source.answer(request, extra, self._problems, settle)
        return self._offline(request, extra), None

    def _offline(self, request: LlmRequest, extra: list[tuple[str, str]]) -> Wire:
        wire, problem = offline_answer(request, self._script, extra)
        if problem is not None:
            self._problems.unexpected(f"request #{request.index} ({request.api}, {request.model})", problem)
        return wire

    # -- life -----------------------------------------------------------------------------------------

    def _bind(self, server: LlmServer) -> None:
        root = f"http://127.0.0.1:{server.port}"
        self.base_url, self.anthropic_base_url = root + "/v1", root
        self._problems.what = f"isolated_llm at {root}"
        self._server = server
        server.bind(self._answer, self._problems)

    async def _aclose(self) -> None:
        clients, self._clients, self._client = self._clients, [], None
        try:
            for client in clients:
                await client.close()
        finally:
            if self._source is not None:
                await self._source.aclose(self._problems)

    async def _reset(self) -> None:
        """Pristine for the next Hypothesis example: journal, script, faults and usage cleared
        (problems not yet reported are kept for the exit)."""
        self._problems.reset()
        self.requests.clear()
        self._script.clear()
        self._faults.clear()
        self._connect_faults.clear()
        self._connect_decided = 0
        if self._server is not None and self._server.gate is not None:
            self._server.gate.open()
        self._meter.reset()
        self._buckets.reset()


async def _probe(settings: Settings) -> None:
    import anthropic  # noqa: F401  (the marker asks for both SDKs)
    import openai  # noqa: F401


async def _self_check() -> None:
    from ._selfcheck import self_check

    await self_check()


@resource("llm", extra="llm", reset=lambda handle: handle._reset(), probe=_probe, self_check=_self_check)
async def isolated_llm(
    *,
    mode: str = "offline",
    cassette: str | Any = None,
    budget_usd: Any = None,
    budget_tokens: int | None = None,
    max_requests: int | None = None,
    rate_limit: RateLimit | None = None,
    prices: Prices = None,
    session_budget: LlmBudget | None = None,
    timing: str = "fast",
    upstream: Mapping[str, str] | str | None = None,
) -> AsyncIterator[LlmHandle]:
    """An OpenAI- and Anthropic-compatible server on ``http://127.0.0.1:<port>`` for one test.

    ``mode``: ``offline`` (answers from ``llm.respond``), ``replay`` (from ``cassette``, never the
    network), ``record`` / ``record_missing`` (forward to the real provider and write the cassette),
    ``live`` (forward, nothing written). ``budget_usd`` (Decimal), ``budget_tokens`` and
    ``max_requests`` refuse a call that could pass them, and so does ``session_budget``, an
    ``ie.LlmBudget`` shared with other tests; ``rate_limit=ie.RateLimit(rpm=, tpm=)``
    answers as the providers do past it. Problems and budget errors are raised on exit.
    """
    if mode not in MODES:
        raise ConfigError(f"isolated_llm(mode={mode!r}): give one of {', '.join(MODES)}")
    caps = {"budget_usd": budget_usd, "budget_tokens": budget_tokens, "max_requests": max_requests}
    meter = Meter(**caps, prices=prices, session=session_budget)
    buckets = Buckets(rate_limit)
    source = open_source(mode, cassette, timing, upstream)
    handle = LlmHandle(mode=mode, meter=meter, buckets=buckets, source=source)
    try:
        async with lease_server() as server:
            handle._bind(server)
            async with serving(handle._problems, handle._aclose):
                try:
                    yield handle
                except BaseException as exc:
                    budget = meter.report()
                    if budget is not None:
                        exc.add_note(str(budget))
                    raise
                budget = meter.report()
                if budget is not None:
                    raise budget
    finally:
        meter.close()  # calls cut short give their share of the session budget back
