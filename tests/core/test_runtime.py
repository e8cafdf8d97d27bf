"""The per-loop Runtime: pools and closers live and die with their event loop, and background work
runs in its task group with failures that reach whoever asked for the work."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from isolated_env._pool import Pool
from isolated_env._runtime import Runtime, close_current_runtime, current_runtime, open_runtimes


def _pool(log: list[str]) -> Pool[int]:
    async def create() -> int:
        return 1

    async def destroy(item: int) -> None:
        log.append("destroyed")

    return Pool("p", create=create, destroy=destroy, capacity=2, lease_timeout=5)


def test_the_runtime_closes_its_pools_and_closers_when_the_loop_ends() -> None:
    log: list[str] = []
    seen: list[Runtime] = []

    async def main() -> None:
        runtime = await current_runtime()
        assert await current_runtime() is runtime  # one per loop
        pool = runtime.pool("k", lambda: _pool(log))
        assert runtime.pool("k", lambda: _pool(log)) is pool
        async with pool.lease():
            pass

        async def closer() -> None:
            log.append("closed")

        runtime.on_close(closer)
        seen.append(runtime)

    asyncio.run(main())
    assert log == ["destroyed", "closed"]
    assert seen[0].closed and seen[0] not in open_runtimes()


def test_a_loop_closes_within_its_bound_when_a_server_stops_answering(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each idle instance's destroy talks to a server that accepts and never answers (a real
    listening socket nobody reads): unbounded, the loop's close would wait a 30 s reset timeout
    per instance."""
    monkeypatch.setattr("isolated_env._runtime._CLOSE_S", 0.5)
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    destroys: list[str] = []

    async def create() -> int:
        return 1

    async def destroy(item: int) -> None:
        destroys.append("started")
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"QUIT\r\n")
            await stream.receive()

    async def main() -> None:
        runtime = await current_runtime()
        pool = runtime.pool("silent", lambda: Pool("silent", create=create, destroy=destroy, capacity=3,
                                                      lease_timeout=5))
        async with pool.lease(), pool.lease(), pool.lease():
            pass  # three idle instances when the loop ends

    started = time.perf_counter()
    try:
        with caplog.at_level(logging.WARNING, logger="isolated_env"):
            asyncio.run(main())
    finally:
        silent.close()
    assert time.perf_counter() - started < 5
    assert destroys == ["started"]  # the bound ran out in the first; the other two were let go
    assert "closing the silent pool took too long; 3 idle instance(s) let go undestroyed" in caplog.text


def test_each_loop_gets_its_own_runtime() -> None:
    async def main() -> Runtime:
        return await current_runtime()

    first, second = asyncio.run(main()), asyncio.run(main())
    assert first is not second and first.closed and second.closed


def test_background_failures_are_kept_logged_and_passed_on(caplog: pytest.LogCaptureFixture) -> None:
    errors: list[BaseException] = []

    async def boom() -> None:
        raise ValueError("background broke")

    async def main() -> Runtime:
        runtime = await current_runtime()
        await runtime.spawn(boom, name="boom", on_error=errors.append)
        await runtime.settle()
        return runtime

    runtime = asyncio.run(main())
    assert [str(e) for e in errors] == ["background broke"]
    assert [str(e) for e in runtime.errors] == ["background broke"]
    assert "background task boom failed" in caplog.text


def test_settle_waits_for_background_work() -> None:
    done: list[int] = []

    async def work(n: int) -> None:
        await anyio.sleep(0.01 * n)
        done.append(n)

    async def main() -> None:
        runtime = await current_runtime()
        for n in range(3):
            await runtime.spawn(work, n, name=f"work {n}")
        await runtime.settle()
        assert sorted(done) == [0, 1, 2]

    asyncio.run(main())
    assert sorted(done) == [0, 1, 2]


def test_a_daemon_is_not_waited_for_and_is_cancelled_at_close() -> None:
    state: dict[str, Any] = {}

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            state["stopped"] = True

    async def main() -> None:
        runtime = await current_runtime()
        await runtime.spawn(forever, name="forever", daemon=True)
        await anyio.lowlevel.checkpoint()
        with anyio.fail_after(5):  # closing waits up to 10 s for work that ends: a daemon is not waited for
            await runtime.settle()
            await close_current_runtime()
        state["closed"] = runtime.closed

    asyncio.run(main())
    assert state == {"stopped": True, "closed": True}


def test_spawns_racing_on_a_new_runtime_share_one_host_and_all_stop_at_close() -> None:
    """Two first spawns at once (two leases of a fresh loop): one host task group for both, so
    closing the runtime stops both daemons, not only those of the group it knew last."""
    stopped: list[str] = []

    async def forever(name: str) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stopped.append(name)

    async def main() -> None:
        runtime = await current_runtime()
        async with anyio.create_task_group() as tg:
            for name in ("a", "b"):
                tg.start_soon(functools.partial(runtime.spawn, forever, name, name=name, daemon=True))
        await anyio.lowlevel.checkpoint()
        hosts = [t for t in asyncio.all_tasks() if t.get_name() == "isolated-env-runtime"]
        assert len(hosts) == 1, hosts
        with anyio.fail_after(5):
            await close_current_runtime()
        assert sorted(stopped) == ["a", "b"]  # before the loop's own shutdown cancels what is left

    asyncio.run(main())


def test_spawn_after_close_is_refused() -> None:
    async def main() -> None:
        runtime = await current_runtime()
        await close_current_runtime()

        async def nothing() -> None:
            pass

        with pytest.raises(RuntimeError, match="closed"):
            await runtime.spawn(nothing, name="late")

    asyncio.run(main())


def test_the_runtime_works_on_trio() -> None:
    pytest.importorskip("trio")
    done: list[str] = []

    async def work() -> None:
        done.append("ran")

    async def main() -> None:
        runtime = await current_runtime()
        await runtime.spawn(work, name="on trio")
        await runtime.settle()

    anyio.run(main, backend="trio")
    assert done == ["ran"]

