"""isolated_http's record/replay against a local upstream (another isolated_http): no internet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from isolated_env._errors import ConfigError, ResourceCheckFailed, SecretInCassette
from isolated_env._recording import Cassette
from isolated_env.resources.http import RecordedRequest, isolated_http


def _stream(request: RecordedRequest) -> httpx.Response:
    async def events() -> AsyncIterator[bytes]:
        for n in range(3):
            yield f"data: {n}\n\n".encode()
        yield bytes(range(256))  # not text: kept as base64, replayed as the same bytes

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())


async def test_record_then_replay_byte_for_byte_without_the_upstream(tmp_path: Path) -> None:
    tape = tmp_path / "tapes" / "api.jsonl"
    async with isolated_http() as real:
        real.expect("GET", "/users/1").respond_json({"id": 1, "name": "Ann"}, headers={"x-served": "real"})
        real.expect("POST", "/stream", json={"n": 3}).respond_with(_stream)
        async with isolated_http(mode="record", cassette=tape, upstream=real.url) as http:
            http.expect("GET", "/health").respond(200, "ok")  # answered here, never recorded
            assert (await http.client.get("/health")).text == "ok"
            user = await http.client.get("/users/1", headers={"authorization": "Bearer not-a-real-key-1234"})
            streamed = await http.client.post("/stream", json={"n": 3})
        assert real.requests[0].headers["authorization"] == "Bearer not-a-real-key-1234"
    recorded = streamed.content
    assert recorded.startswith(b"data: 0\n\n") and recorded.endswith(bytes(range(256)))
    text = tape.read_text()
    assert "not-a-real-key" not in text  # the credential was forwarded, never written
    [first, second] = Cassette.load(tape, must_exist=True).interactions
    assert first.request["path"] == "/users/1" and "authorization" not in first.request["headers"]
    assert len(second.writes) == 4 and second.body == recorded

    async with isolated_http(mode="replay", cassette=tape) as http:  # the upstream is gone
        again = await http.client.get("/users/1")
        assert (again.status_code, again.json(), again.headers["x-served"]) == (200, user.json(), "real")
        async with http.client.stream("POST", "/stream", json={"n": 3}) as response:
            assert response.headers["content-type"] == "text/event-stream"
            assert b"".join([part async for part in response.aiter_raw()]) == recorded


async def test_replay_miss_is_explained_by_the_nearest_recording_and_unused_ones_are_reported(
    tmp_path: Path,
) -> None:
    tape = tmp_path / "t.jsonl"
    async with isolated_http() as real:
        real.expect("GET", "/a").respond(200, "a")
        real.expect("GET", "/b").respond(200, "b")
        async with isolated_http(mode="record", cassette=tape, upstream=real.url) as http:
            await http.client.get("/a", params={"page": "1"})
            await http.client.get("/b")
    with pytest.raises(ResourceCheckFailed) as info:
        async with isolated_http(mode="replay", cassette=tape) as http:
            assert (await http.client.get("/a", params={"page": "2"})).status_code == 500
    text = str(info.value)
    assert "no recorded interaction matches it" in text and '- "page=1"' in text and '+ "page=2"' in text
    assert "recorded interaction GET /b" in text and "never requested" in text


async def test_record_missing_keeps_what_was_there_and_adds_the_rest(tmp_path: Path) -> None:
    tape = tmp_path / "t.jsonl"
    async with isolated_http() as real:
        real.expect("GET", "/a").respond(200, "a1").times(1)
        real.expect("GET", "/b").respond(200, "b1")
        async with isolated_http(mode="record", cassette=tape, upstream=real.url) as http:
            await http.client.get("/a")
        async with isolated_http(mode="record_missing", cassette=tape, upstream=real.url) as http:
            assert (await http.client.get("/a")).text == "a1"  # replayed: the upstream allows /a once
            assert (await http.client.get("/b")).text == "b1"  # recorded now
    assert [i.request["path"] for i in Cassette.load(tape, must_exist=True).interactions] == ["/a", "/b"]


async def test_a_secret_in_a_response_refuses_the_write(tmp_path: Path) -> None:
    tape = tmp_path / "t.jsonl"
    async with isolated_http() as real:
        real.expect("GET", "/key").respond_json({"note": "sk-" + "A" * 30})
        with pytest.raises(ResourceCheckFailed, match="refused to write cassette") as info:
            async with isolated_http(mode="record", cassette=tape, upstream=real.url) as http:
                await http.client.get("/key")
    assert isinstance(info.value.causes[0], SecretInCassette)
    assert not tape.exists()


async def test_routed_hosts_are_recorded_under_their_host(tmp_path: Path) -> None:
    tape = tmp_path / "t.jsonl"
    async with isolated_http() as real:
        real.expect("GET", "/v1/x").respond(200, "x")
        async with isolated_http(mode="record", cassette=tape, hosts=["api.example.com"],
                                 upstream={"api.example.com": real.url}) as http:
            assert (await http.client.get("https://api.example.com/v1/x")).text == "x"
    [item] = Cassette.load(tape, must_exist=True).interactions
    assert item.request["path"] == "//api.example.com/v1/x"
    async with isolated_http(mode="replay", cassette=tape, hosts=["api.example.com"]) as http:
        assert (await http.client.get("https://api.example.com/v1/x")).text == "x"


async def test_bad_record_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs cassette"):
        async with isolated_http(mode="record"):
            pass
    with pytest.raises(ConfigError, match="does not exist"):
        async with isolated_http(mode="replay", cassette=tmp_path / "none.jsonl"):
            pass
    with pytest.raises(ConfigError, match="give one of"):
        async with isolated_http(mode="recrod"):
            pass
    with pytest.raises(ConfigError, match="are for mode="):
        async with isolated_http(cassette=tmp_path / "x.jsonl"):
            pass
    with pytest.raises(ConfigError, match="base URL"):
        async with isolated_http(mode="record", cassette=tmp_path / "x.jsonl", upstream="api.example.com"):
            pass


async def test_recording_a_routed_host_under_interception_reaches_the_real_one(tmp_path: Path) -> None:
    tape = tmp_path / "t.jsonl"
    async with isolated_http() as real:
        real.expect("GET", "/v1/x").respond(200, "from the real localhost")
        port = real.url.rsplit(":", 1)[1]
        # "localhost" is routed (to the recorder) and is also where the real service listens
        async with isolated_http(mode="record", cassette=tape, hosts=["localhost"], intercept=True,
                                 upstream={"localhost": f"http://localhost:{port}"}) as http:
            async with httpx.AsyncClient() as own:
                assert (await own.get("http://localhost:1/v1/x")).text == "from the real localhost"
            assert http.requests[0].headers["host"] == "localhost:1"  # the code's request reached the recorder
        assert real.requests[0].headers["host"] == f"localhost:{port}"
    [item] = Cassette.load(tape, must_exist=True).interactions
    assert item.request["path"] == "//localhost/v1/x"
