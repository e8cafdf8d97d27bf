"""Frameworks built on the SDKs, against isolated_llm with the network blocked: LangChain's
``langchain-openai`` and pydantic-ai (chat, streaming, tool calls / structured output). Both are in
the dev extra, so CI runs every cell; a local install without one skips its cell, saying which.

LlamaIndex and litellm have no cell: ``llama-index-llms-openai`` pins ``openai<3`` while pydantic-ai
needs ``openai>=3.31`` (pip resolves the pair only by falling back to a 2024 LlamaIndex after a
minute and a half of backtracking), and litellm weighs about 275 MB on top of the dev extra."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from isolated_env.resources.llm import isolated_llm


def framework(module: str, package: str) -> Any:
    return pytest.importorskip(module, reason=f"{package} is not installed (pip install -e '.[dev]' brings it)")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network blocked in this test: lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


async def test_langchain_chat_stream_and_tool_calls() -> None:
    langchain_openai = framework("langchain_openai", "langchain-openai")
    # An HTTP client of the test's own, closed with it: langchain-openai's default one is cached for
    # the process and left open at exit.
    async with isolated_llm(budget_usd="0.01") as llm, httpx.AsyncClient() as http:
        llm.respond("LangChain says hi")
        llm.respond(chunks=["Lang", "Chain", " streams"])
        llm.respond(tool_calls=[("get_weather", {"city": "Lyon"})], match={"tools": "get_weather"})
        chat = langchain_openai.ChatOpenAI(
            model="gpt-4o-mini", base_url=llm.base_url, api_key=llm.api_key, max_tokens=100, http_async_client=http
        )
        assert (await chat.ainvoke("hello")).content == "LangChain says hi"
        pieces = [chunk.content async for chunk in chat.astream("hello")]
        assert "".join(pieces) == "LangChain streams"

        def get_weather(city: str) -> str:
            """The weather in a city."""
            return "sunny"

        called = await chat.bind_tools([get_weather]).ainvoke("weather in Lyon?")
        assert called.tool_calls[0]["name"] == "get_weather" and called.tool_calls[0]["args"] == {"city": "Lyon"}
        assert llm.usage.requests == 3 and llm.usage.usd is not None and llm.usage.usd > 0


async def test_pydantic_ai_agent_run_stream_and_structured_output() -> None:
    pydantic_ai = framework("pydantic_ai", "pydantic-ai-slim[openai]")
    from pydantic import BaseModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class City(BaseModel):
        name: str
        country: str

    async with isolated_llm(budget_usd="0.01") as llm:
        llm.respond("Paris is the capital.")
        llm.respond(chunks=["Stream", "ed ", "answer"])
        answer = {"name": "Lyon", "country": "France"}
        llm.respond(tool_calls=[{"name": "final_result", "arguments": answer}], match={"tools": "final_result"})
        model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=llm.client))  # closed on exit
        agent = pydantic_ai.Agent(model)
        assert (await agent.run("The capital of France?")).output == "Paris is the capital."
        async with agent.run_stream("Stream it") as streamed:
            pieces = [piece async for piece in streamed.stream_text(delta=True, debounce_by=None)]
        assert pieces == ["Stream", "ed ", "answer"]
        typed = pydantic_ai.Agent(model, output_type=City)  # structured output is a tool call underneath
        assert (await typed.run("A city in France")).output == City(**answer)
        assert [r.tools for r in llm.requests] == [(), (), ("final_result",)]
        assert llm.usage.requests == 3 and llm.usage.usd is not None and llm.usage.usd > 0
