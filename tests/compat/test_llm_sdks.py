"""The real OpenAI and Anthropic SDKs, sync and async, against isolated_llm, with the network
blocked: any name lookup other than loopback fails the test.

Covers chat.completions, responses and embeddings (streamed and not, tool calls), Anthropic messages,
messages.stream and tool use, and the SDKs' own retry behaviour on a 429/529 with retry-after.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from isolated_env._errors import BudgetExceeded
from isolated_env._recording import scan
from isolated_env.resources.llm import isolated_llm

pytestmark = pytest.mark.requires_llm

try:  # without the llm extra the marker skips every test here (and fails them under CI=true)
    import anthropic
    import openai
except ImportError:
    pass

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
CLAUDE_TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every name lookup but loopback's: an SDK reaching for a real provider fails here."""
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1", b"127.0.0.1"):
            raise OSError(f"network blocked in this test: lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield


# -- openai, async ---------------------------------------------------------------------------------


async def test_openai_async_chat_stream_and_tool_calls() -> None:
    async with isolated_llm() as llm:
        llm.respond("Sunny, 21 degrees.")
        llm.respond(chunks=["Sun", "ny", "."])
        llm.respond(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}], times=2)
        whole = await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert whole.choices[0].message.content == "Sunny, 21 degrees." and whole.usage.total_tokens > 0
        stream = await llm.client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
        assert pieces[1:4] == ["Sun", "ny", "."] and usage is not None and usage.completion_tokens > 0
        called = await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[WEATHER_TOOL])
        [call] = called.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
        async with llm.client.chat.completions.stream(
            model="gpt-4o-mini", messages=USER, tools=[WEATHER_TOOL]
        ) as helper:
            final = await helper.get_final_completion()
        assert final.choices[0].message.tool_calls[0].function.name == "get_weather"
        assert final.choices[0].finish_reason == "tool_calls"


async def test_openai_async_responses_and_embeddings() -> None:
    async with isolated_llm() as llm:
        llm.respond("Paris is sunny.")
        llm.respond(chunks=["Paris", " is", " sunny."])
        llm.respond(tool_calls=[("get_weather", {"city": "Paris"})])
        created = await llm.client.responses.create(model="gpt-4o-mini", input="weather?")
        assert created.output_text == "Paris is sunny." and created.usage.input_tokens > 0
        async with llm.client.responses.stream(model="gpt-4o-mini", input="weather?") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert deltas == ["Paris", " is", " sunny."] and final.output_text == "Paris is sunny."
        tool = await llm.client.responses.create(
            model="gpt-4o-mini",
            input="weather?",
            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        )
        assert tool.output[0].type == "function_call" and json.loads(tool.output[0].arguments) == {"city": "Paris"}
        vectors = await llm.client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert [len(d.embedding) for d in vectors.data] == [1536, 1536]
        assert llm.requests[-1].json["encoding_format"] == "base64"  # the SDK's default, decoded by it
        floats = await llm.client.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
        )
        assert floats.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-6)


async def test_openai_retries_a_429_after_retry_after_and_stops_at_a_refusal() -> None:
    async with isolated_llm(budget_usd="0.001") as llm:
        llm.respond("after one retry")
        llm.fail(429, on_calls=(1,), retry_after=0.05)
        answer = await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=100)
        assert answer.choices[0].message.content == "after one retry"
        assert [r.status for r in llm.requests] == [429, 200]
        assert llm.requests[1].headers["x-stainless-retry-count"] == "1"
        with pytest.raises(openai.RateLimitError) as refused:
            await llm.client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=10_000)
        assert refused.value.code == "insufficient_quota"
        assert len(llm.requests) == 3  # x-should-retry: false, so the SDK did not retry the refusal
        with pytest.raises(BudgetExceeded):
            llm.check()
        fails = llm.openai(max_retries=1)
        llm.fail(500, on_calls=(4, 5))
        with pytest.raises(openai.InternalServerError):
            await fails.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=10)
        assert [r.status for r in llm.requests[3:]] == [500, 500]


# -- openai, sync (in a worker thread: the server runs on this test's loop) ---------------------------


async def test_openai_sync_client() -> None:
    async with isolated_llm() as llm:
        llm.respond(tool_calls=[("get_weather", {"city": "Oslo"})], match={"tools": "get_weather"})
        llm.respond("sync hello", times=None)

        def run() -> tuple[str, str, list[str], int, str]:
            with openai.OpenAI(base_url=llm.base_url, api_key=llm.api_key) as client:
                whole = client.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content
                stream = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
                pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
                text = client.responses.create(model="gpt-4o-mini", input="x").output_text
                dims = len(client.embeddings.create(model="text-embedding-3-small", input="x").data[0].embedding)
                call = client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[WEATHER_TOOL])
                return whole, text, pieces, dims, call.choices[0].message.tool_calls[0].function.arguments

        whole, text, pieces, dims, arguments = await anyio.to_thread.run_sync(run)
        assert (whole, text, "".join(pieces), dims) == ("sync hello", "sync hello", "sync hello", 1536)
        assert json.loads(arguments) == {"city": "Oslo"}


# -- anthropic -----------------------------------------------------------------------------------------


async def test_anthropic_async_messages_stream_and_tool_use() -> None:
    async with isolated_llm() as llm:
        client = llm.anthropic()
        llm.respond("Bonjour!")
        llm.respond(chunks=["Bon", "jour", "!"])
        llm.respond(tool_calls=[("get_weather", {"city": "Paris"})], match={"tools": ["get_weather"]})
        message = await client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=USER)
        assert message.content[0].text == "Bonjour!" and message.stop_reason == "end_turn"
        async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=USER) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        assert texts == ["Bon", "jour", "!"] and final.usage.output_tokens > 0
        tool = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=USER, tools=[CLAUDE_TOOL]
        )
        assert tool.stop_reason == "tool_use" and tool.content[0].input == {"city": "Paris"}
        counted = await client.messages.count_tokens(model="claude-sonnet-4-5", messages=USER)
        assert counted.input_tokens > 0


async def test_anthropic_retries_an_overloaded_529_and_streams_tool_use() -> None:
    async with isolated_llm() as llm:
        client = llm.anthropic()
        llm.respond(tool_calls=[("get_weather", {"city": "Rome"})])
        llm.fail(529, on_calls=(1,), retry_after=0.05)
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=USER, tools=[CLAUDE_TOOL]
        ) as stream:
            final = await stream.get_final_message()
        assert final.content[0].input == {"city": "Rome"}
        assert [r.status for r in llm.requests] == [529, 200]


async def test_anthropic_sync_client() -> None:
    async with isolated_llm() as llm:
        llm.respond("sync claude", times=None)

        def run() -> tuple[str, str]:
            with anthropic.Anthropic(base_url=llm.anthropic_base_url, api_key=llm.api_key) as client:
                whole = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=20, messages=USER)
                with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=20, messages=USER) as s:
                    streamed = "".join(s.text_stream)
                return whole.content[0].text, streamed

        assert await anyio.to_thread.run_sync(run) == ("sync claude", "sync claude")


async def test_the_environment_variables_configure_both_sdks(monkeypatch: pytest.MonkeyPatch) -> None:
    async with isolated_llm() as llm:
        llm.respond("from the environment", times=None)
        for name, value in llm.env.items():
            monkeypatch.setenv(name, value)
        async with openai.AsyncOpenAI() as client:
            answer = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        async with anthropic.AsyncAnthropic() as claude:
            message = await claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)
        assert answer.choices[0].message.content == message.content[0].text == "from the environment"


async def test_a_canary_key_never_reaches_a_cassette_recorded_through_both_sdks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "sk-ant-canary-" + "k" * 40
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    monkeypatch.setenv("ANTHROPIC_API_KEY", canary)
    path = tmp_path / "sdks.json"
    async with isolated_llm() as upstream:
        upstream.api_key = canary
        upstream.respond("recorded through an SDK", times=None)
        async with isolated_llm(
            mode="record",
            cassette=path,
            upstream={"openai": upstream.base_url, "anthropic": upstream.anthropic_base_url},
        ) as llm:
            await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER)
            stream = await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
            [c async for c in stream]
            await llm.client.responses.create(model="gpt-4o-mini", input="x")
            await llm.client.embeddings.create(model="text-embedding-3-small", input="x")
            claude = llm.anthropic()
            await claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)
            async with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=USER) as s:
                await s.get_final_message()
    text = path.read_text()
    assert json.loads(text.splitlines()[0])["interactions"] == 6 == len(text.splitlines()) - 1
    assert canary not in text and scan(text, [canary]) == []
    async with isolated_llm(mode="replay", cassette=path) as llm:
        again = await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert again.choices[0].message.content == "recorded through an SDK"
        stream = await llm.client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == (
            "recorded through an SDK"
        )
        await llm.client.responses.create(model="gpt-4o-mini", input="x")
        await llm.client.embeddings.create(model="text-embedding-3-small", input="x")
        claude = llm.anthropic()
        await claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=USER)
        async with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=USER) as s:
            assert (await s.get_final_message()).content[0].text == "recorded through an SDK"
