"""The resources on trio, anyio's other backend: fs, http, ws and llm serve there as on asyncio (anyio
sockets, ``anyio.Path``, websockets' protocol over anyio), and those whose driver runs on asyncio
only say so in one line, with the fix.

trio is not among the dev dependencies (anyio's plugin would run every test of the suite's child
projects on it too), so this file is not collected by the suite's own run: the trio cell of
tests/adapters/test_matrix.py runs it with pytest in a clean venv that has trio. With trio in your
venv: ``pytest tests/resources/trio_cases.py``."""

from __future__ import annotations

import pathlib

import httpx
import pytest
from test_fs import write_read_list_and_leave

import isolated_env as ie
from isolated_env._errors import ConfigError

pytestmark = pytest.mark.parametrize("anyio_backend", ["trio"])


async def test_fs_on_trio() -> None:
    await write_read_list_and_leave()


async def test_http_on_trio() -> None:
    async with ie.isolated_http() as http:
        http.expect("POST", "/items").respond_json({"id": 7}, status=201)
        http.expect("GET", "/slow").slow_body(chunk_size=2, interval=0.01).respond(body="abcdef")
        http.expect("GET", "/gone").drop()
        created = await http.client.post("/items", json={"name": "x"})
        assert (created.status_code, created.json()) == (201, {"id": 7})
        assert (await http.client.get("/slow")).text == "abcdef"
        with pytest.raises(httpx.RemoteProtocolError):
            await http.client.get("/gone")
        assert [r.json() for r in http.requests if r.method == "POST"] == [{"name": "x"}]


async def test_http_on_trio_raises_what_it_saw_on_exit() -> None:
    with pytest.raises(ie.ResourceCheckFailed, match="GET /nobody matched no expectation"):
        async with ie.isolated_http() as http:
            assert (await http.client.get("/nobody")).status_code == 500


async def test_the_fixtures_on_trio(isolated_fs: ie.FileSystemHandle, isolated_http: ie.HttpHandle) -> None:
    await isolated_fs.write_text("a.txt", "x")
    isolated_http.expect("GET", "/x").respond_json({"a": 1})
    assert (await isolated_http.client.get("/x")).json() == {"a": 1}


@pytest.mark.parametrize("kind", ["postgres", "redis", "clickhouse"])
async def test_asyncio_only_resources_say_so_in_one_line(kind: str) -> None:
    factory = getattr(ie, f"isolated_{kind}")
    with pytest.raises(ConfigError) as caught:
        async with factory():
            pytest.fail("entered on trio")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"isolated_{kind} needs asyncio (") and "runs on trio" in message
    assert "@pytest.mark.anyio with an anyio_backend fixture" in message


async def test_ws_on_trio() -> None:
    async with ie.isolated_ws(strict=True) as ws:
        ws.register_message_handler("ping", lambda m: {"type": "pong", "n": m["n"] + 1})
        ws.register_binary_handler(lambda data: data[::-1])
        seen = ws.expect("note")
        await ws.send_message({"type": "ping", "n": 1})
        assert await ws.receive_message() == {"type": "pong", "n": 2}
        await ws.send_message(b"abc")
        assert await ws.receive_message() == b"cba"
        await ws.send_message({"type": "note", "id": 3})
        assert await ws.receive_message() == {"type": "ack", "id": 3}
        await seen.wait()
        other = await ws.connect("/second", additional_headers={"x-test": "1"})
        assert await ws.broadcast({"type": "news"}) == 2
        assert await ws.receive_message(client=other) == {"type": "news"}
        assert sorted(c.request.path for c in ws.server_connections) == ["/", "/second"]
        assert ws.server_connections[-1].request.headers["x-test"] == "1"
        ws.check()


async def test_ws_on_trio_raises_a_handler_error_in_the_test() -> None:
    def broken(message: dict[str, object]) -> None:
        raise ValueError("boom")

    async with ie.isolated_ws() as ws:
        ws.register_message_handler("x", broken)
        await ws.send_message({"type": "x"})
        with pytest.raises(ie.ResourceCheckFailed, match="handler for 'x' raised ValueError: boom"):
            await ws.receive_message()  # the server closed with 1011; the problem is raised, not the close
        assert ws.client.close_code == 1011


async def test_tls_on_trio() -> None:
    async with ie.isolated_http(tls=True, hosts=["api.example.com"]) as http:
        http.expect("GET", "/v1/x").respond(200, "over tls")
        assert (await http.client.get("https://api.example.com/v1/x")).text == "over tls"
    async with ie.isolated_ws(tls=True) as ws:
        assert ws.url.startswith("wss://")
        await ws.send_message({"type": "hello", "id": 1})
        assert await ws.receive_message() == {"type": "ack", "id": 1}


async def test_llm_on_trio(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LLM server on trio: offline answers and streams, budgets, faults (the connect fault's
    listener gate included) and record/replay, as on asyncio; over httpx, since no SDK is needed."""
    chat = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}

    async def post(llm: ie.LlmHandle, body: dict[str, object], wait: float = 5) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=wait) as client:
            auth = {"authorization": f"Bearer {llm.api_key}"}
            return await client.post(llm.base_url + "/chat/completions", json=body, headers=auth)

    cassette = tmp_path / "trio.json"
    async with ie.isolated_llm(budget_usd="0.01") as upstream:
        upstream.respond(chunks=["on", " trio"], times=None)
        upstream.fail(status=503, on_calls=(2,))
        assert (await post(upstream, chat)).json()["choices"][0]["message"]["content"] == "on trio"
        assert (await post(upstream, chat)).status_code == 503
        monkeypatch.setenv("OPENAI_API_KEY", upstream.api_key)
        async with ie.isolated_llm(mode="record", cassette=cassette, upstream=upstream.base_url) as recorder:
            recorded = await post(recorder, {**chat, "stream": True})
        assert '"content":" trio"' in recorded.text and recorded.text.endswith("data: [DONE]\n\n")
        assert upstream.usage.requests == 2 and upstream.usage.usd is not None and upstream.usage.usd > 0
    async with ie.isolated_llm(mode="replay", cassette=cassette) as replay:
        assert (await post(replay, {**chat, "stream": True})).content == recorded.content
    async with ie.isolated_llm() as llm:
        llm.fail(connect_delay=30, on_calls=(1,))
        with pytest.raises(httpx.ConnectTimeout):  # the listener answers no new connection
            await post(llm, chat, wait=0.2)
