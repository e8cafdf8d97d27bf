"""The shared in-process server lifecycle, on a small real TCP server built from it (no mocks).

The line server answers one line with one line: ``ping`` -> ``pong``; ``boom`` makes its handler
raise (recorded, answered ``error``); ``hang`` keeps its handler busy forever; ``crash`` is a bug in
the server itself; anything else is an unexpected request (recorded, answered ``unexpected``).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute

from isolated_env._errors import ResourceCheckFailed
from isolated_env.resources._inprocess import InProcessHandle, Problem, ServerTasks, Slot, serving


class LineServer(InProcessHandle):
    def __init__(self) -> None:
        super().__init__("line server")
        self.port = 0
        self.expected: list[str] = []
        self.received: list[str] = []
        self.resets = 0
        self.finished = 0
        self.tasks: ServerTasks[asyncio.StreamWriter] = ServerTasks(
            self._problems, "the line server's connection task", gone=(ConnectionError,)
        )

    def _unmet(self) -> list[Problem]:
        return [Problem(f"expected {line!r}, never received") for line in self.expected if line not in self.received]

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.tasks.run(writer, functools.partial(self._serve, reader))

    async def _serve(self, reader: asyncio.StreamReader, slot: Slot[asyncio.StreamWriter]) -> None:
        writer = slot.peer
        try:
            while line := (await reader.readline()).decode().strip():
                self.received.append(line)
                self._pulse.notify()
                writer.write((await self._answer(slot, line)).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            self.resets += 1
            raise
        finally:
            writer.close()
            self.finished += 1
            self._pulse.notify()

    async def _answer(self, slot: Slot[asyncio.StreamWriter], line: str) -> str:
        if line == "ping":
            return "pong"
        if line == "boom":
            try:
                with slot.doing("handler for 'boom'"):
                    raise ValueError(f"bad payload {len(self.received)}")
            except ValueError as exc:
                self._problems.record(f"handler for 'boom' raised ValueError: {exc}", exc)
                return "error"
        if line == "hang":
            with slot.doing("handler for 'hang'"):
                await anyio.sleep_forever()
        if line == "crash":
            raise RuntimeError("a bug in the line server")
        self._problems.unexpected(f"line {line!r}", "no handler for it")
        return "unexpected"


@asynccontextmanager
async def line_server(*, grace: float = 2.0) -> AsyncIterator[LineServer]:
    handle = LineServer()
    server = await asyncio.start_server(handle.connection, "127.0.0.1", 0)
    handle.port = server.sockets[0].getsockname()[1]

    async def aclose() -> None:
        server.close()
        await handle.tasks.stop(grace)
        await server.wait_closed()

    async with serving(handle._problems, aclose):
        yield handle


async def ask(server: LineServer, line: str) -> str:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        await stream.send(line.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                reply += await stream.receive()
            except anyio.EndOfStream:
                break
        return reply.decode().strip()


async def test_a_clean_run_raises_nothing() -> None:
    async with line_server() as server:
        assert await ask(server, "ping") == "pong"
        server.check()
    assert server.tasks.running == []


async def test_handler_error_is_raised_by_check_once_with_its_cause() -> None:
    async with line_server() as server:
        assert await ask(server, "boom") == "error"
        with pytest.raises(ResourceCheckFailed, match="handler for 'boom' raised ValueError: bad payload 1") as info:
            server.check()
        assert isinstance(info.value.__cause__, ValueError)
        assert "line server saw 1 problem(s)" in str(info.value)
        server.check()  # reported once: neither a later check nor the exit raises it again


async def test_handler_error_never_checked_is_raised_on_exit() -> None:
    with pytest.raises(ResourceCheckFailed, match="handler for 'boom' raised ValueError") as info:
        async with line_server() as server:
            assert await ask(server, "boom") == "error"
    assert isinstance(info.value.__cause__, ValueError)


async def test_several_handler_errors_keep_every_cause() -> None:
    with pytest.raises(ResourceCheckFailed, match="2 problem") as info:
        async with line_server() as server:
            await ask(server, "boom")
            await ask(server, "boom")
    cause = info.value.__cause__
    assert isinstance(cause, ExceptionGroup)
    assert [str(e) for e in cause.exceptions] == ["bad payload 1", "bad payload 2"]


async def test_unexpected_request_is_reported() -> None:
    async with line_server() as server:
        assert await ask(server, "hello") == "unexpected"
        with pytest.raises(ResourceCheckFailed, match="unexpected line 'hello': no handler for it"):
            server.check()


async def test_unexpected_request_becomes_a_note_when_the_test_already_failed() -> None:
    with pytest.raises(KeyError) as info:
        async with line_server() as server:
            await ask(server, "hello")
            raise KeyError("the test's own failure")
    assert any("unexpected line 'hello'" in note for note in getattr(info.value, "__notes__", []))


async def test_a_failing_server_task_is_recorded_not_logged() -> None:
    with pytest.raises(ResourceCheckFailed, match="connection task failed: RuntimeError") as info:
        async with line_server() as server:
            assert await ask(server, "crash") == ""  # the connection closed without an answer
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_a_peer_that_resets_the_connection_is_not_a_problem() -> None:
    async with line_server() as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        await stream.send(b"ping\n")
        assert await stream.receive() == b"pong\n"
        # SO_LINGER 0: the close sends a RST, so the server's read fails with ConnectionResetError.
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
        assert await server._pulse.wait_until(lambda: server.finished == 1, 5)
        assert server.resets == 1
        server.check()


async def test_a_stuck_handler_is_cancelled_and_reported_on_exit() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"handler for 'hang' was still running 0.05 s after"):
        async with line_server(grace=0.05) as server:
            sock = await anyio.connect_tcp("127.0.0.1", server.port)
            async with sock:
                await sock.send(b"hang\n")
                assert await server._pulse.wait_until(lambda: "hang" in server.received, 5)
    assert server.tasks.running == []


async def test_unmet_expectation_is_raised_by_every_check_until_met() -> None:
    async with line_server() as server:
        server.expected.append("ping")
        for _ in range(2):
            with pytest.raises(ResourceCheckFailed, match="expected 'ping', never received"):
                server.check()
        await ask(server, "ping")
        server.check()


async def test_reset_keeps_what_it_cleared_for_the_exit() -> None:
    with pytest.raises(ResourceCheckFailed, match=r"\(before reset 1\) handler for 'boom'"):
        async with line_server() as server:
            await ask(server, "boom")
            server._problems.reset()
            server.check()  # a clean slate for the next example...
            assert await ask(server, "ping") == "pong"
    # ...but the exit still raised what the reset cleared.


async def test_a_non_final_stop_lets_the_server_take_new_connections() -> None:
    async with line_server() as server:
        sock = await anyio.connect_tcp("127.0.0.1", server.port)
        async with sock:
            await sock.send(b"hang\n")
            assert await server._pulse.wait_until(lambda: "hang" in server.received, 5)
            await server.tasks.stop(0, final=False)
        with pytest.raises(ResourceCheckFailed, match="'hang' was still running"):
            server.check()
        assert await ask(server, "ping") == "pong"


async def test_wait_until_says_false_when_nothing_arrives() -> None:
    async with line_server() as server:
        assert await server._pulse.wait_until(lambda: "never" in server.received, 0.01) is False
