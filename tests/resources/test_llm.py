"""isolated_llm's server over real loopback HTTP: the providers' shapes read back with plain httpx
(no SDK needed), the script, the journal, key isolation, pooling and the fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _llm_helpers import CHAT, post, sse_events

import isolated_env as ie
from isolated_env._errors import ConfigError, ResourceCheckFailed
from isolated_env.resources.llm import isolated_llm


async def test_chat_completion_shape_headers_and_usage() -> None:
    async with isolated_llm() as llm:
        assert llm.base_url.startswith("http://127.0.0.1:") and llm.base_url.endswith("/v1")
        assert llm.anthropic_base_url == llm.base_url.removesuffix("/v1")
        llm.respond("Hello!", usage={"input_tokens": 9, "output_tokens": 2})
        response = await post(llm, "/chat/completions", CHAT)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["openai-version"] == "2020-10-01"
        body = response.json()
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ]
        assert body["usage"]["prompt_tokens"] == 9 and body["usage"]["completion_tokens"] == 2
        assert body["usage"]["total_tokens"] == 11
        assert llm.usage.requests == 1 and (llm.usage.input_tokens, llm.usage.output_tokens) == (9, 2)
        # gpt-4o-mini: $0.15 / $0.60 per million tokens
        assert str(llm.usage.usd) == str(ie.Price("0.15", "0.60").cost(9, 2))
        [request] = llm.requests
        assert (request.api, request.model, request.text, request.status) == ("chat", "gpt-4o-mini", "Say hello", 200)


async def test_chat_stream_frames_with_include_usage_and_done() -> None:
    async with isolated_llm() as llm:
        llm.respond(chunks=["Hel", "lo", "!"])
        response = await post(
            llm, "/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = sse_events(response.text)
        assert events[-1] == (None, "[DONE]")
        chunks = [json.loads(data) for _, data in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hel", "lo", "!"]
        assert chunks[4]["choices"][0]["finish_reason"] == "stop"
        assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] >= 1
        assert all(c["usage"] is None for c in chunks[:5])


async def test_chat_stream_without_include_usage_sends_no_usage_but_is_counted() -> None:
    async with isolated_llm() as llm:
        llm.respond("two words")
        response = await post(llm, "/chat/completions", {**CHAT, "stream": True})
        chunks = [json.loads(d) for _, d in sse_events(response.text)[:-1]]
        assert all("usage" not in c for c in chunks)
        # the client was told nothing; the budget counts the worst case, never $0
        assert llm.usage.unknown == 1 and llm.usage.usd is not None and llm.usage.usd > 0


async def test_tool_calls_in_chat_stream_and_whole() -> None:
    async with isolated_llm() as llm:
        llm.respond(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}], times=2)
        whole = (await post(llm, "/chat/completions", CHAT)).json()["choices"][0]
        assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] is None
        [call] = whole["message"]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
            "get_weather",
            {"city": "Paris"},
        )
        streamed = await post(llm, "/chat/completions", {**CHAT, "stream": True})
        deltas = [json.loads(d)["choices"][0]["delta"] for _, d in sse_events(streamed.text)[:-1]]
        calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
        assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
        assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}


async def test_responses_api_whole_and_streamed_events() -> None:
    async with isolated_llm() as llm:
        llm.respond("Hi there", times=2)
        body = (await post(llm, "/responses", {"model": "gpt-4o-mini", "input": "hello"})).json()
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output"][0]["content"][0] == {
            "type": "output_text",
            "annotations": [],
            "logprobs": [],
            "text": "Hi there",
        }
        streamed = await post(llm, "/responses", {"model": "gpt-4o-mini", "input": "hello", "stream": True})
        events = sse_events(streamed.text)
        names = [e for e, _ in events]
        assert names[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert names[-1] == "response.completed"
        datas = [json.loads(d) for _, d in events]
        assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
        assert all(d["type"] == e for (e, _), d in zip(events, datas, strict=True))
        assert "".join(d["delta"] for d in datas if d["type"] == "response.output_text.delta") == "Hi there"


async def test_embeddings_float_and_base64_are_the_same_deterministic_vector() -> None:
    import base64
    import struct

    async with isolated_llm() as llm:
        body = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8}
        floats = (await post(llm, "/embeddings", body)).json()
        packed = (await post(llm, "/embeddings", {**body, "encoding_format": "base64"})).json()
        again = (await post(llm, "/embeddings", body)).json()
        assert floats["object"] == "list" and len(floats["data"]) == 2
        vector = floats["data"][0]["embedding"]
        assert len(vector) == 8 and abs(sum(v * v for v in vector) - 1) < 1e-6
        decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
        assert max(abs(a - b) for a, b in zip(decoded, vector, strict=True)) < 1e-6
        assert again["data"] == floats["data"] and floats["data"][0] != floats["data"][1]
        llm.respond(embedding=[0.5, 0.5])
        assert (await post(llm, "/embeddings", body)).json()["data"][0]["embedding"] == [0.5, 0.5]


async def test_anthropic_messages_whole_and_streamed_events() -> None:
    async with isolated_llm() as llm:
        llm.respond("Bonjour", times=2)
        body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
        whole = await post(llm, "/messages", body, anthropic=True)
        message = whole.json()
        assert whole.headers["request-id"].startswith("req_")
        assert message["type"] == "message" and message["content"] == [{"type": "text", "text": "Bonjour"}]
        assert message["stop_reason"] == "end_turn" and message["usage"]["output_tokens"] >= 1
        streamed = await post(llm, "/messages", {**body, "stream": True}, anthropic=True)
        events = sse_events(streamed.text)
        assert [e for e, _ in events] == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        delta = json.loads(events[5][1])
        assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] >= 1


async def test_anthropic_tool_use_stream_carries_input_json_deltas() -> None:
    async with isolated_llm() as llm:
        llm.respond(tool_calls=[("lookup", {"q": "weather in Paris"})])
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        events = [json.loads(d) for _, d in sse_events((await post(llm, "/messages", body, anthropic=True)).text)]
        start = next(e for e in events if e["type"] == "content_block_start")
        assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
        partial = "".join(e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta")
        assert json.loads(partial) == {"q": "weather in Paris"}
        assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"


async def test_script_matches_in_order_with_matchers_and_times() -> None:
    async with isolated_llm() as llm:
        weather = llm.respond("sunny", match="weather")
        llm.respond("by model", match={"model": "gpt-4o"})
        llm.respond("fallback", times=None)
        texts = []
        for model, prompt in [
            ("gpt-4o-mini", "the weather?"),
            ("gpt-4o", "x"),
            ("gpt-4o-mini", "weather again"),
            ("gpt-4o-mini", "y"),
        ]:
            reply = await post(
                llm, "/chat/completions", {"model": model, "messages": [{"role": "user", "content": prompt}]}
            )
            texts.append(reply.json()["choices"][0]["message"]["content"])
        assert texts == ["sunny", "by model", "fallback", "fallback"]  # `weather` answers once (times=1)
        assert [r.text for r in weather.requests] == ["the weather?"]


async def test_an_unmatched_request_gets_a_provider_error_and_fails_check() -> None:
    async with isolated_llm() as llm:
        llm.respond("only about cats", match="cats")
        response = await post(llm, "/chat/completions", CHAT)
        assert response.status_code == 400 and response.headers["x-should-retry"] == "false"
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "no scripted response matches" in error["message"]
        with pytest.raises(ResourceCheckFailed, match="does not contain 'cats'") as raised:
            llm.check()
        assert "scripted respond('only about cats'" in str(raised.value)  # and it was never used
        llm.respond("ok")
        await post(llm, "/chat/completions", CHAT)
        with pytest.raises(ResourceCheckFailed, match="only about cats"):
            llm.check()  # the unused one is reported until used
        await post(llm, "/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "cats"}]})
        llm.check()


async def test_problems_are_raised_on_exit() -> None:
    with pytest.raises(ResourceCheckFailed, match="nothing was scripted"):
        async with isolated_llm() as llm:
            await post(llm, "/chat/completions", CHAT)


async def test_a_key_of_another_test_and_an_unknown_path_are_refused_and_reported() -> None:
    async with isolated_llm() as llm:
        refused = await post(llm, "/chat/completions", CHAT, key="sk-not-this-one")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        claude = await post(
            llm, "/messages", {"model": "claude-3-haiku", "max_tokens": 5, "messages": []}, key="wrong", anthropic=True
        )
        assert claude.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": claude.json()["error"]["message"]},
            "request_id": claude.headers["request-id"],
        }
        missing = await post(llm, "/nope", {})
        assert missing.status_code == 404
        with pytest.raises(ResourceCheckFailed) as raised:
            llm.check()
        assert str(raised.value).count("API key is not this test's") == 2 and "no OpenAI or Anthropic API" in str(
            raised.value
        )


async def test_servers_are_pooled_and_a_later_test_gets_a_fresh_key_and_journal() -> None:
    async with isolated_llm() as first:
        first.respond("one")
        await post(first, "/chat/completions", CHAT)
        old_url, old_key = first.base_url, first.api_key
    async with isolated_llm() as second:
        assert second.base_url == old_url  # the same listener, leased again
        assert second.api_key != old_key and second.requests == []
        assert (await post(second, "/chat/completions", CHAT, key=old_key)).status_code == 401
        with pytest.raises(ResourceCheckFailed, match="API key is not this test's"):
            second.check()


async def test_env_reaches_a_subprocess() -> None:
    code = textwrap.dedent("""
        import json, os, urllib.request
        request = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions",
            data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"], "Content-Type": "application/json"})
        print(json.load(urllib.request.urlopen(request))["choices"][0]["message"]["content"])
    """)
    async with isolated_llm() as llm:
        llm.respond("from a subprocess")
        import anyio.to_thread

        done = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-c", code], env={**os.environ, **llm.env}, capture_output=True, text=True, timeout=60
            )
        )
        assert done.stdout.strip() == "from a subprocess", done.stderr
        assert llm.env["ANTHROPIC_BASE_URL"] == llm.anthropic_base_url


async def test_in_an_environment_and_after_reset() -> None:
    async with ie.Environment() as env:
        llm = await env.enter(isolated_llm())
        assert env["llm"] is llm
        llm.respond("before reset")
        await post(llm, "/chat/completions", CHAT)
        await env.reset()
        assert llm.requests == [] and llm.usage.requests == 0 and llm.scripted == []
        llm.respond("after reset")
        assert (await post(llm, "/chat/completions", CHAT)).json()["choices"][0]["message"]["content"] == "after reset"


async def test_bad_arguments_say_how_to_fix_them() -> None:
    with pytest.raises(ConfigError, match="mode='offlne'"):
        async with isolated_llm(mode="offlne"):
            pass
    with pytest.raises(ConfigError, match="rate_limit"):
        async with isolated_llm(rate_limit=60):  # type: ignore[arg-type]
            pass


async def test_bad_script_and_fault_arguments() -> None:
    async with isolated_llm() as llm:
        with pytest.raises(ConfigError, match="chunks join to"):
            llm.respond("abc", chunks=["a", "b"])
        with pytest.raises(ConfigError, match="times=0"):
            llm.respond("x", times=0)
        with pytest.raises(ConfigError, match="exactly one fault"):
            llm.fail()
        with pytest.raises(ConfigError, match="on_calls"):
            llm.fail(500, on_calls=(0,))
        with pytest.raises(ConfigError, match="unknown key"):
            llm.respond("x", match={"modle": "gpt-4o"})
        with pytest.raises(ConfigError, match=r"connect_delay=-1\): give a number of seconds"):
            llm.fail(connect_delay=-1)
        with pytest.raises(ConfigError, match="exactly one fault"):
            llm.fail(connect_delay=1, drop=True)
    with pytest.raises(ConfigError, match="budget_usd"):
        async with isolated_llm(budget_usd="lots"):
            pass
    with pytest.raises(ConfigError, match="session budget usd='lots' is not a number of US dollars"):
        ie.LlmBudget(usd="lots")
    with pytest.raises(ConfigError, match="session budget tokens=-1: give a whole number >= 0"):
        ie.LlmBudget(tokens=-1)


def test_the_fixture_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    pytester.makepyfile(
        test_it="""
        import httpx

        async def test_fixture(isolated_llm):
            isolated_llm.respond("hi from the fixture")
            async with httpx.AsyncClient(trust_env=False) as client:
                r = await client.post(isolated_llm.base_url + "/chat/completions",
                                      headers={"authorization": "Bearer " + isolated_llm.api_key},
                                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
            assert r.json()["choices"][0]["message"]["content"] == "hi from the fixture"

        async def test_env_name(isolated_env, isolated_llm):
            assert isolated_env["llm"] is isolated_llm
    """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.requires_llm
def test_the_doctor_row() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "isolated_env.cli", "doctor", "llm"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    row = next(line for line in done.stdout.splitlines() if line.startswith("llm "))
    assert done.returncode == 0 and row.split()[1] == "local" and row.split()[-1] == "ok", done.stdout + done.stderr
