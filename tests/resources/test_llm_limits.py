"""isolated_llm's budgets (Decimal, pre-flight refusal, reconciliation), rate limits (token buckets
with the providers' headers) and faults on deterministic schedules, over real loopback HTTP."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import anyio
import httpx
import pytest
from _llm_helpers import CHAT, post, sse_events

import isolated_env as ie
from isolated_env._errors import BudgetExceeded, ResourceCheckFailed, UnpricedModel
from isolated_env.resources.llm import PRICES_VERSION, LlmHandle, isolated_llm, price_of
from isolated_env.resources.llm._ratelimit import go_duration

CLAUDE = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


async def stream_frames(
    llm: LlmHandle, body: dict[str, object], read_timeout: float = 5.0
) -> tuple[list[bytes], Exception]:
    """The raw pieces of a streamed answer read until it fails, and how it failed."""
    got: list[bytes] = []
    async with httpx.AsyncClient(trust_env=False, timeout=read_timeout) as client:
        try:
            async with client.stream(
                "POST",
                llm.base_url + "/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {llm.api_key}"},
            ) as response:
                async for piece in response.aiter_raw():
                    got.append(piece)
        except Exception as exc:
            return got, exc
    raise AssertionError(f"the stream ended cleanly: {b''.join(got)!r}")


# -- budgets ---------------------------------------------------------------------------------------


async def test_a_call_whose_worst_case_passes_the_budget_is_refused_and_fails_the_test() -> None:
    with pytest.raises(BudgetExceeded, match=r"could cost up to \$0\.01") as raised:
        async with isolated_llm(budget_usd="0.005") as llm:
            scripted = llm.respond("never sent", times=None)
            # gpt-4o: $10 per million output tokens, so max_tokens=1000 alone may cost $0.01
            response = await post(llm, "/chat/completions", {**CHAT, "model": "gpt-4o", "max_tokens": 1000})
            assert response.status_code == 429 and response.headers["x-should-retry"] == "false"
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
            assert scripted.requests == []  # nothing answered it
            assert llm.usage.refused == 1 and llm.usage.requests == 0 and llm.usage.usd == 0
            # the same call with a small cap goes through, reconciled at what it used
            ok = await post(llm, "/chat/completions", {**CHAT, "model": "gpt-4o", "max_tokens": 10})
            assert ok.status_code == 200
            usage = ok.json()["usage"]
            expected = (Decimal("2.50") * usage["prompt_tokens"] + Decimal(10) * usage["completion_tokens"]) / 10**6
            assert llm.usage.usd == expected and isinstance(llm.usage.usd, Decimal)
    assert "budget_usd=$0.005" in str(raised.value)


async def test_anthropic_gets_its_own_refusal_shape_and_check_raises_budget_exceeded() -> None:
    async with isolated_llm(budget_usd=Decimal("0.0001")) as llm:
        response = await post(llm, "/messages", {**CLAUDE, "max_tokens": 4096}, anthropic=True)
        body = response.json()
        assert response.status_code == 400 and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("Your credit balance is too low")
        with pytest.raises(BudgetExceeded, match="max output tokens"):
            llm.check()
        llm.check()  # reported once


async def test_a_stream_without_usage_is_charged_its_worst_case_never_zero() -> None:
    # gpt-4o-mini, max_tokens=1000: worst case about $0.0006 of output; the budget holds one such call
    async with isolated_llm(budget_usd="0.001") as llm:
        llm.respond("short", times=None)
        body = {**CHAT, "max_tokens": 1000, "stream": True}
        first = await post(llm, "/chat/completions", body)
        assert first.status_code == 200 and "usage" not in first.text
        assert llm.usage.unknown == 1
        assert llm.usage.output_tokens == 1000 and llm.usage.usd is not None and llm.usage.usd >= Decimal("0.0006")
        second = await post(llm, "/chat/completions", body)
        assert second.status_code == 429  # the unknown spend counts against the budget
        with_usage = await post(
            llm, "/chat/completions", {**body, "max_tokens": 5, "stream_options": {"include_usage": True}}
        )
        assert with_usage.status_code == 200 and llm.usage.unknown == 1  # this one reported its usage
        with pytest.raises(BudgetExceeded):
            llm.check()


async def test_an_unpriced_model_fails_closed_unless_the_test_prices_it() -> None:
    with pytest.raises(UnpricedModel, match="'house-model' has no price"):
        async with isolated_llm(budget_usd="1") as llm:
            llm.respond("x", times=None)
            refused = await post(llm, "/chat/completions", {**CHAT, "model": "house-model"})
            assert refused.status_code == 429
    async with isolated_llm(budget_usd="1", prices={"house-model": ie.Price("1", "2", max_output=100)}) as llm:
        llm.respond("x", usage={"input_tokens": 1000, "output_tokens": 500})
        assert (await post(llm, "/chat/completions", {**CHAT, "model": "house-model"})).status_code == 200
        assert llm.usage.usd == Decimal("0.002")
    async with isolated_llm() as llm:  # no budget: nothing refused, but the cost is unknown, not $0
        llm.respond("x")
        assert (await post(llm, "/chat/completions", {**CHAT, "model": "house-model"})).status_code == 200
        assert llm.usage.usd is None and llm.usage.requests == 1


async def test_budget_tokens_and_max_requests() -> None:
    async with isolated_llm(budget_tokens=300, max_requests=2) as llm:
        llm.respond("x", times=None, usage={"input_tokens": 10, "output_tokens": 10})
        assert (await post(llm, "/chat/completions", {**CHAT, "max_tokens": 50})).status_code == 200
        too_big = await post(llm, "/chat/completions", {**CHAT, "max_tokens": 500})
        assert too_big.status_code == 429 and "budget_tokens=300" in too_big.json()["error"]["message"]
        assert (await post(llm, "/chat/completions", {**CHAT, "max_tokens": 50})).status_code == 200
        third = await post(llm, "/chat/completions", {**CHAT, "max_tokens": 5})
        assert third.status_code == 429 and "max_requests=2" in third.json()["error"]["message"]
        assert (llm.usage.requests, llm.usage.refused, llm.usage.input_tokens) == (2, 2, 20)
        with pytest.raises(BudgetExceeded, match="2 budget problems"):
            llm.check()


async def test_concurrent_calls_cannot_pass_the_budget_together() -> None:
    async with isolated_llm(budget_usd="0.001") as llm:
        llm.respond("slow", times=None)
        llm.fail(first_byte_delay=0.3, on_calls=(1,))
        body = {**CHAT, "max_tokens": 1000}  # worst case ~ $0.0006 each: one fits, two do not
        statuses: list[int] = []

        async def call() -> None:
            statuses.append((await post(llm, "/chat/completions", body)).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(0.1)
            tg.start_soon(call)
        assert sorted(statuses) == [200, 429]
        with pytest.raises(BudgetExceeded):
            llm.check()


async def test_a_session_budget_is_shared_by_tests_with_the_same_preflight_and_reconciliation() -> None:
    session = ie.LlmBudget(usd="0.001", requests=3)
    async with isolated_llm(session_budget=session) as llm:
        llm.respond("one", usage={"input_tokens": 1000, "output_tokens": 100})  # $0.00021 with gpt-4o-mini
        assert (await post(llm, "/chat/completions", {**CHAT, "max_tokens": 200})).status_code == 200
    assert session.usage.usd == Decimal("0.00021") and session.usage.requests == 1
    # the next test's own budget is ample; the session's $0.00079 left is not, for gpt-4o's worst case
    with pytest.raises(BudgetExceeded, match=r"session budget usd=\$0\.001 has \$0\.00079 left"):
        async with isolated_llm(budget_usd="1", session_budget=session) as llm:
            refused = await post(llm, "/chat/completions", {**CHAT, "model": "gpt-4o", "max_tokens": 1000})
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
            assert llm.usage.refused == 1 and llm.usage.usd == 0
    assert (session.usage.requests, session.usage.refused) == (1, 1)
    # two tests at once: a call in flight in one holds its worst case against the other's
    with pytest.raises(BudgetExceeded):
        async with isolated_llm(session_budget=session) as a, isolated_llm(session_budget=session) as b:
            a.respond("slow")
            a.fail(first_byte_delay=0.3, on_calls=(1,))
            body = {**CHAT, "max_tokens": 1000}  # worst case ~ $0.0006: the session has room for one
            statuses: list[int] = []

            async def call(llm: LlmHandle) -> None:
                statuses.append((await post(llm, "/chat/completions", body)).status_code)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, a)
                await anyio.sleep(0.1)
                tg.start_soon(call, b)
            assert statuses == [429, 200]  # b refused while a's call was in flight
    assert session.usage.requests == 2 and session.ledger.reserved == {}
    with pytest.raises(BudgetExceeded, match="session budget requests=3"):  # the call cap counts across tests
        async with isolated_llm(session_budget=session) as llm:
            llm.respond("last", usage={"input_tokens": 1, "output_tokens": 1})
            assert (await post(llm, "/chat/completions", {**CHAT, "max_tokens": 5})).status_code == 200
            assert (await post(llm, "/chat/completions", {**CHAT, "max_tokens": 5})).status_code == 429
    assert repr(session).startswith("<LlmBudget usd=0.001, requests=3 spent $")
    with pytest.raises(ie.ConfigError, match="session_budget"):
        async with isolated_llm(session_budget={"usd": 1}):  # type: ignore[arg-type]
            pass


def test_prices_are_pinned_and_snapshots_cost_their_base_name() -> None:
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", PRICES_VERSION)
    mini = price_of("gpt-4o-mini")
    assert mini is not None and (mini.input, mini.output) == (Decimal("0.15"), Decimal("0.60"))
    assert price_of("gpt-4o-mini-2024-07-18") == mini
    assert price_of("claude-3-5-haiku-20241022") == price_of("claude-3-5-haiku")
    assert price_of("gpt-4o-mini-custom") is None  # nothing loose
    assert price_of("gpt-4o", {"gpt-4o": ie.Price("1", "1")}) == ie.Price("1", "1")
    assert price_of("anything", lambda model: ie.Price("3", "4")) == ie.Price("3", "4")


# -- rate limits -----------------------------------------------------------------------------------


async def test_rpm_bucket_with_openai_headers_and_retry_after() -> None:
    async with isolated_llm(rate_limit=ie.RateLimit(rpm=2, tpm=100_000)) as llm:
        llm.respond("x", times=None)
        first = await post(llm, "/chat/completions", CHAT)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "100000"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        second = await post(llm, "/chat/completions", CHAT)
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        third = await post(llm, "/chat/completions", CHAT)
        assert third.status_code == 429 and 20 <= int(third.headers["retry-after"]) <= 30  # 2 per minute: 30 s apart
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert llm.usage.refused == 1 and llm.usage.requests == 2


async def test_anthropic_rate_limit_headers_and_a_call_larger_than_tpm() -> None:
    async with isolated_llm(rate_limit=ie.RateLimit(tpm=500)) as llm:
        llm.respond("x", times=None)
        ok = await post(llm, "/messages", CLAUDE, anthropic=True)
        assert ok.headers["anthropic-ratelimit-tokens-limit"] == "500"
        assert int(ok.headers["anthropic-ratelimit-tokens-remaining"]) < 500
        assert ok.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
        huge = await post(llm, "/messages", {**CLAUDE, "max_tokens": 1000}, anthropic=True)
        assert huge.status_code == 429 and huge.json()["error"]["type"] == "rate_limit_error"
        assert huge.headers["x-should-retry"] == "false"  # it can never fit


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0, 0.0171, 1, 59.5, 360, 3723.5)] == [
        "0s",
        "18ms",
        "1s",
        "59.5s",
        "6m0s",
        "1h2m3.5s",
    ]


# -- faults ----------------------------------------------------------------------------------------


async def test_status_faults_on_call_indexes_in_each_providers_shape() -> None:
    async with isolated_llm() as llm:
        llm.respond("x", times=None)
        fault = llm.fail(500, on_calls=(2,))
        overloaded = llm.fail(529, on_calls=(4,), retry_after=0.5)
        statuses = [(await post(llm, "/chat/completions", CHAT)).status_code for _ in range(3)]
        assert statuses == [200, 500, 200] and fault.hits == [2]
        claude = await post(llm, "/messages", CLAUDE, anthropic=True)
        assert claude.status_code == 529 and claude.json()["error"]["type"] == "overloaded_error"
        assert claude.headers["retry-after"] == "0.5" and overloaded.hits == [4]
        assert llm.usage.requests == 2  # failed calls are not charged


async def test_a_seeded_schedule_hits_the_same_calls_every_run() -> None:
    hits = []
    for _ in range(2):
        async with isolated_llm() as llm:
            llm.respond("x", times=None)
            fault = llm.fail(503, probability=0.5, seed=7)
            for _ in range(12):
                await post(llm, "/chat/completions", CHAT)
            hits.append(fault.hits)
            assert [r.index for r in llm.requests if r.status == 503] == fault.hits
    assert hits[0] == hits[1] and 0 < len(hits[0]) < 12


async def test_disconnect_after_chunk_k_cuts_the_stream() -> None:
    async with isolated_llm() as llm:
        llm.respond(chunks=["a", "b", "c", "d"])
        llm.fail(disconnect_after=2)
        got, exc = await stream_frames(llm, {**CHAT, "stream": True})
        assert isinstance(exc, httpx.RemoteProtocolError)
        assert len(sse_events(b"".join(got).decode())) == 2  # the role chunk and "a", then nothing


async def test_stall_and_first_byte_delay_are_read_timeouts() -> None:
    async with isolated_llm() as llm:
        llm.respond(chunks=["a", "b"], times=None)
        llm.fail(stall_after=1, stall=10, on_calls=(1,))
        llm.fail(first_byte_delay=10, on_calls=(2,))
        got, exc = await stream_frames(llm, {**CHAT, "stream": True}, read_timeout=0.3)
        assert isinstance(exc, httpx.ReadTimeout) and len(sse_events(b"".join(got).decode())) == 1
        with pytest.raises(httpx.ReadTimeout):
            async with httpx.AsyncClient(trust_env=False, timeout=0.3) as client:
                await client.post(
                    llm.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {llm.api_key}"}
                )


async def test_malformed_sse_and_a_dropped_connection() -> None:
    async with isolated_llm() as llm:
        llm.respond(chunks=["a", "b"])
        llm.fail(malformed_after=1, on_calls=(1,))
        llm.fail(drop=True, on_calls=(2,))
        events = sse_events((await post(llm, "/chat/completions", {**CHAT, "stream": True})).text)
        with pytest.raises(json.JSONDecodeError):
            json.loads(events[1][1])
        with pytest.raises(httpx.RemoteProtocolError):
            await post(llm, "/chat/completions", CHAT)


async def test_unused_faults_and_problems_do_not_hide_the_tests_own_error() -> None:
    with pytest.raises(ZeroDivisionError) as raised:
        async with isolated_llm(budget_usd="0") as llm:
            await post(llm, "/chat/completions", CHAT)
            1 / 0  # noqa: B018
    notes = "\n".join(raised.value.__notes__)
    assert "budget_usd=$0" in notes


async def test_check_reports_other_problems_alongside_a_budget_error() -> None:
    async with isolated_llm(budget_usd="0") as llm:
        await post(llm, "/chat/completions", CHAT)
        await post(llm, "/chat/completions", CHAT, key="wrong")
        with pytest.raises(BudgetExceeded) as raised:
            llm.check()
        assert "API key is not this test's" in "\n".join(raised.value.__notes__)
        llm.check()
    with pytest.raises(ResourceCheckFailed):
        async with isolated_llm() as llm:
            llm.respond("never asked")


@pytest.mark.requires_llm
async def test_connect_delay_is_a_connect_timeout_and_a_later_retry_connects() -> None:
    import openai

    async with isolated_llm() as llm:
        llm.respond("first")
        llm.respond("after the retry")
        fault = llm.fail(connect_delay=0.5, on_calls=(2,))
        # Call 1 on a client of its own, with time to spare: a worker's event loop may stall for
        # longer than 0.2 s (a collection of a large heap), and that is no connect fault.
        first = await llm.openai(max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
        assert first.choices[0].message.content == "first"
        hasty = llm.openai(max_retries=0, timeout=0.2)  # the SDK's own timeout setting
        with pytest.raises(openai.APITimeoutError):  # call 2 never reached the server
            await hasty.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
        assert fault.hits == [2] and len(llm.requests) == 1
        assert llm.requests[0].status == 200
        patient = llm.openai(max_retries=3, timeout=0.2)  # its backoff outlasts the delay
        answer = await patient.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
        assert answer.choices[0].message.content == "after the retry"
        assert len(llm.requests) == 2 and int(llm.requests[1].headers["x-stainless-retry-count"]) >= 1
    async with isolated_llm() as llm:  # on call 1, and the next test finds the listener open
        llm.fail(connect_delay=30, on_calls=(1,))
        async with httpx.AsyncClient(trust_env=False, timeout=0.2) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.post(llm.base_url + "/chat/completions", json=CHAT)
        assert llm.requests == []
    async with isolated_llm() as llm:
        llm.respond("open again")
        assert (await post(llm, "/chat/completions", CHAT)).status_code == 200
