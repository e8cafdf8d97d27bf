"""Frameworks built on the SDKs, against isolated_llm with the network blocked: LangChain's
``langchain-openai`` (chat, streaming, tool calls). Skipped where the framework is not installed."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from isolated_env.resources.llm import isolated_llm

langchain_openai = pytest.importorskip("langchain_openai")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network blocked in this test: lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


async def test_langchain_chat_stream_and_tool_calls() -> None:
    async with isolated_llm(budget_usd="0.01") as llm:
        llm.respond("LangChain says hi")
        llm.respond(chunks=["Lang", "Chain", " streams"])
        llm.respond(tool_calls=[("get_weather", {"city": "Lyon"})], match={"tools": "get_weather"})
        chat = langchain_openai.ChatOpenAI(
            model="gpt-4o-mini", base_url=llm.base_url, api_key=llm.api_key, max_tokens=100
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
