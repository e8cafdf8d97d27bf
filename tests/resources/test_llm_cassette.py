"""Record, replay and record_missing against a local upstream (a second isolated_llm, offline), the
cassette format, matching and misses, unused interactions, and the secret guard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from _llm_helpers import CHAT, post

from isolated_env._errors import ConfigError, ResourceCheckFailed, SecretInCassette
from isolated_env._recording import Cassette, make_interaction, scan
from isolated_env.resources.llm import LlmHandle, isolated_llm

CANARY = "sk-canary-" + "x" * 32  # shaped like a real key: the scan would find it anywhere
CLAUDE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 50,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def upstream_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)


def urls(upstream: LlmHandle) -> dict[str, str]:
    return {"openai": upstream.base_url, "anthropic": upstream.anthropic_base_url}


async def record(path: Path, mode: str = "record") -> tuple[list[httpx.Response], list[str]]:
    """Record three calls through a recorder whose upstream is an offline isolated_llm."""
    async with isolated_llm() as upstream:
        upstream.api_key = CANARY  # the upstream accepts the key the recorder was given
        upstream.respond("recorded answer", times=None)
        async with isolated_llm(mode=mode, cassette=path, upstream=urls(upstream)) as recorder:
            got = [
                await post(recorder, "/chat/completions", CHAT),
                await post(
                    recorder, "/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
                ),
                await post(recorder, "/messages", CLAUDE, anthropic=True),
            ]
            assert [r.headers.get("authorization") for r in upstream.requests] == [f"Bearer {CANARY}"] * 2 + [None]
            assert upstream.requests[2].headers["x-api-key"] == CANARY
            assert recorder.usage.requests == 3 and recorder.usage.unknown == 0
        return got, [r.text for r in got]


async def test_record_then_replay_the_same_bytes_with_no_upstream(tmp_path: Path, upstream_keys: None) -> None:
    path = tmp_path / "llm.json"
    recorded, texts = await record(path)
    assert [r.status_code for r in recorded] == [200, 200, 200]
    head, *lines = path.read_text().splitlines()
    document = {**json.loads(head), "interactions": [json.loads(line) for line in lines]}
    assert document["version"] == 1 and len(document["interactions"]) == 3
    assert CANARY not in path.read_text()  # the key was forwarded, never written
    stream = document["interactions"][1]["response"]
    assert stream["writes"][0]["offset"] == 0 and all(w["at_ms"] >= 0 for w in stream["writes"])
    assert "".join(w["text"] for w in stream["writes"]) == texts[1]
    assert stream["events"][-1] == {"event": None, "data": "[DONE]"}
    # replay: the upstream is gone; nothing but the cassette answers
    async with isolated_llm(mode="replay", cassette=path, upstream="http://127.0.0.1:9") as llm:
        replayed = [
            await post(llm, "/chat/completions", CHAT),
            await post(llm, "/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
            await post(llm, "/messages", CLAUDE, anthropic=True),
        ]
        assert [r.text for r in replayed] == texts
        assert replayed[2].headers["content-type"] == recorded[2].headers["content-type"]
        # usage reconciled from the recording: the include_usage chunk, Anthropic's message_delta
        assert llm.usage.requests == 3 and llm.usage.unknown == 0 and llm.usage.output_tokens > 0


async def test_a_miss_shows_a_diff_against_the_nearest_and_unused_ones_are_reported(
    tmp_path: Path, upstream_keys: None
) -> None:
    path = tmp_path / "llm.json"
    await record(path)
    with pytest.raises(ResourceCheckFailed) as raised:
        async with isolated_llm(mode="replay", cassette=path) as llm:
            changed = {**CHAT, "messages": [{"role": "user", "content": "Say goodbye"}]}
            miss = await post(llm, "/chat/completions", changed)
            assert miss.status_code == 400 and "no recorded interaction matches" in miss.json()["error"]["message"]
    text = str(raised.value)
    assert '-     "content": "Say hello",' in text and '+     "content": "Say goodbye",' in text
    assert text.count("was never requested") == 3


async def test_matching_ignores_volatile_headers_and_key_order(tmp_path: Path, upstream_keys: None) -> None:
    path = tmp_path / "llm.json"
    await record(path)
    with pytest.raises(ResourceCheckFailed, match="was never requested"):  # the other two, on exit
        async with isolated_llm(mode="replay", cassette=path) as llm:
            reordered = json.dumps({"messages": CHAT["messages"], "model": CHAT["model"]})
            async with httpx.AsyncClient(trust_env=False) as client:
                answer = await client.post(
                    llm.base_url + "/chat/completions",
                    content=reordered,
                    headers={
                        "authorization": f"Bearer {llm.api_key}",
                        "x-stainless-retry-count": "3",
                        "x-request-id": "whatever",
                        "content-type": "application/json",
                    },
                )
            assert answer.json()["choices"][0]["message"]["content"] == "recorded answer"


async def test_record_missing_records_only_what_the_cassette_lacks(tmp_path: Path, upstream_keys: None) -> None:
    path = tmp_path / "llm.json"
    await record(path)
    async with isolated_llm() as upstream:
        upstream.api_key = CANARY
        upstream.respond("a new answer")
        async with isolated_llm(mode="record_missing", cassette=path, upstream=urls(upstream)) as llm:
            old = await post(llm, "/chat/completions", CHAT)
            new = await post(llm, "/chat/completions", {**CHAT, "model": "gpt-4o"})
            await post(llm, "/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
            await post(llm, "/messages", CLAUDE, anthropic=True)
        assert len(upstream.requests) == 1  # only the missing one went upstream
    assert old.json()["choices"][0]["message"]["content"] == "recorded answer"
    assert new.json()["choices"][0]["message"]["content"] == "a new answer"
    assert json.loads(path.read_text().splitlines()[0])["interactions"] == 4


async def test_replay_at_the_recorded_pace_keeps_each_write_apart(tmp_path: Path) -> None:
    path = tmp_path / "paced.json"
    cassette = Cassette(path, [])
    frames = [(5.0, b'data: {"n": 1}\n\n'), (150.0, b'data: {"n": 2}\n\n'), (300.0, b"data: [DONE]\n\n")]
    cassette.add(
        make_interaction(
            "POST",
            "/v1/chat/completions",
            "",
            [],
            json.dumps(CHAT).encode(),
            200,
            [("content-type", "text/event-stream; charset=utf-8")],
            frames,
        )
    )
    cassette.save(keep_existing=False)
    async with isolated_llm(mode="replay", cassette=path, timing="recorded") as llm:
        arrivals = []
        async with httpx.AsyncClient(trust_env=False) as client:
            async with client.stream(
                "POST",
                llm.base_url + "/chat/completions",
                json=CHAT,
                headers={"authorization": f"Bearer {llm.api_key}"},
            ) as response:
                started = time.perf_counter()
                async for piece in response.aiter_raw():
                    arrivals.append(((time.perf_counter() - started) * 1000, piece))
    assert [piece for _, piece in arrivals] == [data for _, data in frames]  # one read per recorded write
    assert arrivals[1][0] - arrivals[0][0] > 100 and arrivals[2][0] - arrivals[1][0] > 100
    assert llm.usage.unknown == 1  # no usage in those frames: unknown, never $0


async def test_a_secret_in_the_answer_refuses_the_write(tmp_path: Path, upstream_keys: None) -> None:
    path = tmp_path / "llm.json"
    leaked = "your key is sk-ant-" + "a" * 40
    with pytest.raises(ResourceCheckFailed, match="refused to write cassette") as raised:
        async with isolated_llm() as upstream:
            upstream.api_key = CANARY
            upstream.respond(leaked)
            async with isolated_llm(mode="record", cassette=path, upstream=urls(upstream)) as llm:
                assert leaked in (await post(llm, "/chat/completions", CHAT)).text
    assert isinstance(raised.value.__cause__, SecretInCassette) and "sk-ant" in str(raised.value)
    assert not path.exists() and not list(tmp_path.iterdir())  # noqa: ASYNC240  (nothing, not even a partial)


def test_the_deny_list_drops_auth_headers_and_key_fields_and_the_scan_finds_shapes() -> None:
    body = json.dumps({"model": "m", "api_key": CANARY, "nested": {"Token": "t" * 20}}).encode()
    item = make_interaction(
        "POST",
        "/v1/x",
        "",
        [
            ("Authorization", f"Bearer {CANARY}"),
            ("x-api-key", CANARY),
            ("x-stainless-os", "Linux"),
            ("anthropic-version", "2023-06-01"),
        ],
        body,
        200,
        [("set-cookie", "s=1"), ("content-type", "application/json")],
        [(1.0, b"{}")],
    )
    assert item.request["headers"] == {"anthropic-version": "2023-06-01"}
    assert item.request["json"] == {"model": "m", "nested": {}}
    assert item.headers == [("content-type", "application/json")]
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    findings = scan(f"a AKIAIOSFODNN7EXAMPLE b {jwt} c sk-proj-{'z' * 30}", known=["plain-secret-value"])
    assert len(findings) == 3 and all("…" in f for f in findings)
    assert scan("the value plain-secret-value", known=["plain-secret-value"]) != []


async def test_bad_cassette_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        async with isolated_llm(mode="replay", cassette=tmp_path / "missing.json"):
            pass
    with pytest.raises(ConfigError, match="needs cassette"):
        async with isolated_llm(mode="record"):
            pass
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        async with isolated_llm(mode="replay", cassette=tmp_path / "bad.json"):
            pass
    with pytest.raises(ConfigError, match="timing"):
        async with isolated_llm(mode="replay", cassette=tmp_path / "bad.json", timing="slow"):
            pass


async def test_record_without_a_key_says_which_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ResourceCheckFailed, match="OPENAI_API_KEY is not set"):
        async with isolated_llm(mode="live", upstream="http://127.0.0.1:9/v1") as llm:
            assert (await post(llm, "/chat/completions", CHAT)).status_code == 401


async def test_record_passes_a_stream_on_write_by_write_while_the_upstream_stalls(
    tmp_path: Path, upstream_keys: None
) -> None:
    path = tmp_path / "relayed.json"
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": "Bearer "}
    async with isolated_llm() as upstream:
        upstream.api_key = CANARY
        upstream.respond(chunks=["first", " second"], times=None)
        upstream.fail(stall_after=2, stall=30, on_calls=(1,))  # after "first", 30 s of nothing
        upstream.fail(stall_after=2, stall=0.2, on_calls=(2,))
        async with isolated_llm(mode="record", cassette=path, upstream=urls(upstream)) as recorder:
            headers["authorization"] += recorder.api_key
            seen = b""
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                url = recorder.base_url + "/chat/completions"
                async with client.stream("POST", url, json=body, headers=headers) as r:
                    async for piece in r.aiter_raw():  # a recorder that waited for the end would time out here
                        seen += piece
                        if b'"first"' in seen:
                            break
            assert b"second" not in seen
            whole = await post(recorder, "/chat/completions", body)  # this one stalls 0.2 s, then ends
            assert [json.loads(d) for d in whole.text.split("data: ")[1:-1]][-1]["usage"]["completion_tokens"] > 0
            assert recorder.usage.requests >= 1
    items = Cassette.load(path, must_exist=True).interactions
    assert len(items) == 1  # the stream cut short is not stored
    [item] = items
    assert b"".join(data for _, data in item.writes) == whole.content
    offsets = [at for at, _ in item.writes]
    assert len(offsets) > 2 and offsets == sorted(offsets)  # each write as it arrived, in order
