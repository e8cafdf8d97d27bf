"""isolated_ws against its real server and real clients (no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import anyio
import anyio.lowlevel
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from isolated_env._environment import Environment
from isolated_env._errors import ConfigError, ResourceCheckFailed
from isolated_env.resources import ws as ws_module
from isolated_env.resources.http import isolated_http
from isolated_env.resources.ws import WebSocketHandle, isolated_ws


async def test_agent_started_ack_as_in_the_original_report() -> None:
    # The original report's example, run as written against env["websocket"] (what the
    # websocket_integration_environment fixture hands out).
    events: list[dict[str, Any]] = []

    async def handle_agent_started(message: dict[str, Any]) -> None:
        events.append(message)

    async with Environment() as websocket_integration_environment:
        await websocket_integration_environment.enter(isolated_ws())
        websocket = websocket_integration_environment["websocket"]

        # Register handler for agent events
        websocket.register_message_handler("agent_started", handle_agent_started)

        # Send real WebSocket message
        await websocket.send_message({"type": "agent_started", "id": "test_123"})

        # Receive real response
        response = await websocket.receive_message()
        assert response["type"] == "ack"

    assert response == {"type": "ack", "id": "test_123"}
    assert events == [{"type": "agent_started", "id": "test_123"}]


async def test_unhandled_type_is_acknowledged_with_its_id() -> None:
    async with isolated_ws() as ws:
        assert ws.url.startswith("ws://127.0.0.1:")
        await ws.send_message({"type": "anything", "id": 7})
        assert await ws.receive_message() == {"type": "ack", "id": 7}
        await ws.send_message({"type": "no_id"})
        assert await ws.receive_message() == {"type": "ack", "id": None}


async def test_handlers_sync_async_several_replies_or_none() -> None:
    async with isolated_ws() as ws:
        ws.register_message_handler("ping", lambda m: {"type": "pong", "n": m["n"] + 1})

        async def run_agent(message: dict[str, Any]) -> list[dict[str, Any]]:
            await anyio.lowlevel.checkpoint()
            return [{"type": "agent_thinking"}, {"type": "agent_completed", "task": message["task"]}]

        ws.register_message_handler("start", run_agent)
        ws.register_message_handler("quiet", lambda m: [])

        await ws.send_message({"type": "ping", "n": 1})
        assert await ws.receive_message() == {"type": "pong", "n": 2}
        await ws.send_message({"type": "start", "task": "t1"})
        assert await ws.receive_message() == {"type": "agent_thinking"}
        assert await ws.receive_message() == {"type": "agent_completed", "task": "t1"}
        await ws.send_message({"type": "quiet"})
        with pytest.raises(TimeoutError, match="no message arrived"):
            await ws.receive_message(timeout=0.05)
        assert [m["type"] for m in ws.received] == ["ping", "start", "quiet"]


async def test_handler_mutations_do_not_rewrite_received() -> None:
    async with isolated_ws() as ws:

        def mutate(message: dict[str, Any]) -> dict[str, Any]:
            message["secret"] = "changed"
            return message

        ws.register_message_handler("m", mutate)
        await ws.send_message({"type": "m"})
        assert await ws.receive_message() == {"type": "m", "secret": "changed"}
        assert ws.received == [{"type": "m"}]


async def test_catch_all_handler_gets_other_types_and_plain_text() -> None:
    async with isolated_ws() as ws:
        seen: list[Any] = []

        def catch_all(message: Any) -> dict[str, Any]:
            seen.append(message)
            return {"type": "seen"}

        ws.register_message_handler("*", catch_all)
        ws.register_message_handler("own", lambda m: {"type": "own"})
        await ws.send_message({"type": "other"})
        assert await ws.receive_message() == {"type": "seen"}
        await ws.send_message("plain text")
        assert await ws.receive_message() == {"type": "seen"}
        await ws.send_message({"type": "own"})
        assert await ws.receive_message() == {"type": "own"}
    assert seen == [{"type": "other"}, "plain text"]


async def test_received_keeps_arrival_order_across_clients() -> None:
    async with isolated_ws() as ws:
        second = await ws.connect("/second")
        for n in range(5):
            await ws.send_message({"type": "a", "n": n})
            assert (await ws.receive_message())["type"] == "ack"
            await ws.send_message({"type": "b", "n": n}, client=second)
            assert (await ws.receive_message(client=second))["type"] == "ack"
        assert [(m["type"], m["n"]) for m in ws.received] == [(t, n) for n in range(5) for t in "ab"]
        assert [c.request.path for c in ws.server_connections if c.request] == ["/", "/second"]


async def test_broadcast_and_server_initiated_messages_reach_every_client() -> None:
    async with isolated_ws() as ws:
        others = [await ws.connect() for _ in range(3)]
        assert await ws.broadcast({"type": "notice", "text": "hi"}) == 4
        for client in [None, *others]:
            assert await ws.receive_message(client=client) == {"type": "notice", "text": "hi"}
        await ws.server_connections[2].send(json.dumps({"type": "just_you"}))
        assert await ws.receive_message(client=others[1]) == {"type": "just_you"}
        with pytest.raises(TimeoutError):
            await ws.receive_message(timeout=0.05, client=others[0])


async def test_binary_frames_echo_by_default_and_can_be_handled() -> None:
    async with isolated_ws() as ws:
        await ws.send_message(b"\x00\x01\xff")
        assert await ws.receive_message() == b"\x00\x01\xff"
        ws.register_binary_handler(lambda data: data[::-1])
        await ws.send_message(b"abc")
        assert await ws.receive_message() == b"cba"
        assert ws.received == [b"\x00\x01\xff", b"abc"]
        await ws.broadcast(b"server-bytes")
        assert await ws.receive_message() == b"server-bytes"


async def test_close_codes_both_ways() -> None:
    async with isolated_ws() as ws:
        await ws.close_connections(4000, "go away")
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive_message()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "go away")

        client = await ws.connect()
        await client.close(4001, "bye")
        server_side = ws.server_connections[-1]
        await server_side.wait_closed()
        assert (server_side.close_code, server_side.close_reason) == (4001, "bye")


async def test_handler_error_fails_the_client_fast_and_is_raised_once() -> None:
    async with isolated_ws() as ws:
        ws.register_message_handler("boom", lambda m: {"type": "never", "n": 1 / 0})
        await ws.send_message({"type": "boom", "id": 1})
        with pytest.raises(ResourceCheckFailed, match="handler for 'boom' raised ZeroDivisionError") as info:
            await ws.receive_message()
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        ws.check()  # already reported to the test: not raised a second time, nor on exit


async def test_handler_error_is_raised_on_exit_when_never_checked() -> None:
    with pytest.raises(ResourceCheckFailed, match="handler for 'boom' raised ValueError") as info:
        async with isolated_ws() as ws:

            async def boom(message: dict[str, Any]) -> None:
                raise ValueError("bad payload")

            ws.register_message_handler("boom", boom)
            await ws.send_message({"type": "boom"})
    assert isinstance(info.value.__cause__, ValueError)


async def test_problems_become_a_note_when_the_test_already_failed() -> None:
    with pytest.raises(KeyError) as info:
        async with isolated_ws() as ws:
            await ws.send_message("not json")
            await ws.send_message({"type": "sync"})  # one connection is served in order:
            await ws.receive_message()  # once this ack is back, "not json" was seen
            raise KeyError("the test's own failure")
    notes = getattr(info.value, "__notes__", [])
    assert any("unexpected message 'not json'" in note for note in notes)


async def test_untyped_message_is_unexpected() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"unexpected message \[1, 2\]"):
        async with isolated_ws() as ws:
            await ws.send_message("[1, 2]")
            with pytest.raises(ResourceCheckFailed):
                await ws.receive_message(timeout=0.2)  # no reply; the problem is raised instead
            await ws.send_message("[1, 2]")
            await ws.send_message({"type": "sync"})
            await ws.receive_message()


async def test_strict_mode_flags_unplanned_types() -> None:
    with pytest.raises(ResourceCheckFailed, match="unexpected 'surprise' message"):
        async with isolated_ws(strict=True) as ws:
            ws.expect("planned")
            await ws.send_message({"type": "planned", "id": 1})
            assert await ws.receive_message() == {"type": "ack", "id": 1}
            await ws.send_message({"type": "surprise"})


async def test_expectations_count_and_wait() -> None:
    async with isolated_ws() as ws:
        ready = ws.expect("event", count=3)
        other = await ws.connect()
        for n in range(3):
            await ws.send_message({"type": "event", "n": n}, client=other)
        messages = await ready.wait()
        assert [m["n"] for m in messages] == [0, 1, 2]
        ws.check()

    with pytest.raises(ResourceCheckFailed, match=r"expected 2 'event' message\(s\), the server received 1"):
        async with isolated_ws() as ws:
            waiting = ws.expect("event", count=2)
            await ws.send_message({"type": "event"})
            with pytest.raises(TimeoutError, match="expected 2 'event'"):
                await waiting.wait(timeout=0.1)


async def test_reset_gives_a_clean_handle_but_keeps_handlers_and_problems() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"\(before reset 1\) handler for 'bad'"):
        async with Environment() as env:
            ws: WebSocketHandle = await env.enter(isolated_ws())
            ws.register_message_handler("echo", lambda m: {"type": "echoed", "v": m["v"]})
            ws.register_message_handler("bad", lambda m: m["missing"])
            extra = await ws.connect()
            await ws.send_message({"type": "echo", "v": 1})
            await ws.send_message({"type": "bad"}, client=extra)
            ws.expect("echo", count=1)
            await ws.broadcast({"type": "stale"})
            old_client = ws.client

            await env.reset()

            assert ws.received == [] and ws.server_connections[:0] == []
            assert ws.client is not old_client
            await ws.send_message({"type": "echo", "v": 2})
            assert await ws.receive_message() == {"type": "echoed", "v": 2}  # nothing stale first
            ws.check()  # the problem from before the reset is kept for the exit, not for check()


async def test_no_default_client() -> None:
    async with isolated_ws(connect_client=False) as ws:
        with pytest.raises(ConfigError, match="connect_client=False"):
            _ = ws.client
        app_client = await ws.connect()
        await ws.send_message({"type": "hello", "id": "x"}, client=app_client)
        assert await ws.receive_message(client=app_client) == {"type": "ack", "id": "x"}


async def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="must start with '/'"):
        async with isolated_ws(path="nope"):
            pass
    async with isolated_ws() as ws:
        with pytest.raises(ConfigError):
            ws.register_message_handler("", lambda m: None)
        with pytest.raises(ConfigError):
            ws.expect("x", count=-1)


async def test_stuck_handler_is_cancelled_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "_EXIT_GRACE", 0.1)
    never = anyio.Event()

    async def stuck(message: dict[str, Any]) -> None:
        await never.wait()

    with pytest.raises(ResourceCheckFailed, match="handler for 'stuck' was still running"):
        async with isolated_ws() as ws:
            ws.register_message_handler("stuck", stuck)
            await ws.send_message({"type": "stuck"})
            await ws.expect("stuck").wait()


def _our_inet_ports() -> set[int]:
    ports = set()
    for conn in psutil.Process(os.getpid()).net_connections(kind="inet"):
        if conn.laddr:
            ports.add(conn.laddr.port)
        if conn.raddr:
            ports.add(conn.raddr.port)
    return ports


async def _settle() -> None:
    # The HTTP server serves from the loop's runtime task group: make sure its one host task exists
    # before tasks are counted, so the count compares servers, not the runtime's first use.
    async with isolated_http():
        pass
    for _ in range(5):
        await asyncio.sleep(0)


async def test_cancelled_test_still_cleans_up() -> None:
    await _settle()
    tasks_before = len(asyncio.all_tasks())
    ports: set[int] = set()
    with anyio.move_on_after(0.2) as scope:
        async with isolated_ws() as ws, isolated_http() as http:
            ports |= {int(ws.url.rsplit(":", 1)[1].strip("/")), int(http.url.rsplit(":", 1)[1])}
            http.expect("GET", "/hang").delay(30)
            await http.client.get("/hang")
    assert scope.cancelled_caught
    await _settle()
    assert not ports & _our_inet_ports()
    assert len(asyncio.all_tasks()) == tasks_before


async def test_hundred_concurrent_environments_no_crosstalk_nothing_left() -> None:
    await _settle()
    proc = psutil.Process(os.getpid())
    fds_before = proc.num_fds()
    tasks_before = len(asyncio.all_tasks())
    ports: set[int] = set()
    results: dict[int, tuple[Any, Any, list[Any]]] = {}
    all_open = anyio.Event()
    opened = 0

    async def one(n: int) -> None:
        nonlocal opened
        async with Environment() as env:
            ws = await env.enter(isolated_ws())
            http = await env.enter(isolated_http())
            ports.add(int(ws.url.rsplit(":", 1)[1].strip("/")))
            ports.add(int(http.url.rsplit(":", 1)[1]))
            ws.register_message_handler("who", lambda m: {"type": "me", "env": n, "asked": m["env"]})
            http.expect("GET", "/who").respond_json({"env": n})
            opened += 1
            if opened == 100:
                all_open.set()
            await all_open.wait()  # every server is up at once
            await env["websocket"].send_message({"type": "who", "env": n})
            reply = await ws.receive_message()
            response = await http.client.get("/who")
            results[n] = (reply, response.json(), list(ws.received))

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(one, n)

    assert len(ports) == 200
    for n, (reply, body, received) in results.items():
        assert reply == {"type": "me", "env": n, "asked": n}
        assert body == {"env": n}
        assert received == [{"type": "who", "env": n}]
    await _settle()
    assert not ports & _our_inet_ports(), "ports still open after every environment closed"
    assert proc.num_fds() <= fds_before
    assert len(asyncio.all_tasks()) == tasks_before

