"""A server that dies comes back (finding 3): ``kill -9`` of the embedded PostgreSQL, Redis or
ClickHouse adaptor while a test uses it fails that test with one ServerDied (the log's tail
attached), and the next environment works on a new server. Real servers, real SIGKILL, five times
each, in a state directory of their own."""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import isolated_env as ie
from isolated_env._servers import registry
from isolated_env._servers._process import naming, poll_until

KILLS = 5

FACTORIES = {"postgres": ie.isolated_postgres, "redis": ie.isolated_redis, "clickhouse": ie.isolated_clickhouse}


async def _query(kind: str, handle: Any) -> None:
    if kind == "postgres":
        assert await handle.fetchval("SELECT 1") == 1
    elif kind == "redis":
        assert await handle.ping()
    else:
        assert await handle.command("SELECT 1") == 1


@pytest.fixture
def own_servers(private_state_dir: Path, clean_environ: pytest.MonkeyPatch) -> Iterator[Path]:
    """Servers of this test's own, left (so stopped) before the state dir goes."""
    clean_environ.setenv("ISOLATED_ENV_STATE_DIR", str(private_state_dir))
    try:
        yield private_state_dir
    finally:
        for kind in FACTORIES:
            registry.release(kind, private_state_dir)


def _kill(kind: str, state_dir: Path) -> int:
    state = registry.status(kind, state_dir)
    assert state is not None and state.server_alive()
    pidfd = os.pidfd_open(state.pid)
    try:
        os.kill(state.pid, signal.SIGKILL)
        # exited by the kernel's account: every thread gone (a zombie's other threads may linger)
        assert select.select([pidfd], [], [], 10)[0]
    finally:
        os.close(pidfd)
    return state.pid


@pytest.mark.parametrize("kind", list(FACTORIES))
async def test_a_killed_server_fails_the_running_test_once_and_comes_back(kind: str, own_servers: Path) -> None:
    if kind == "clickhouse" and importlib.util.find_spec("chdb") is None:
        pytest.skip("the embedded ClickHouse engine (chdb) is not installed")
    factory = FACTORIES[kind]
    async with ie.Environment() as env:
        await _query(kind, await env.enter(factory()))
    recovered_s = []
    failures = 0
    for _ in range(KILLS):
        with pytest.raises(ie.ServerDied) as caught:
            async with ie.Environment() as env:
                handle = await env.enter(factory())
                pid = _kill(kind, own_servers)
                with anyio.fail_after(10):
                    while True:  # the driver's own error, first: what a test sees mid-query
                        await _query(kind, handle)
                        await anyio.sleep(0.01)
        died = caught.value
        assert died.pid == pid
        assert f"pid {pid}" in str(died) and "died (killed by SIGKILL)" in str(died)
        assert died.log_tail and died.log_tail not in ("(no log)", "(empty log)", "(no log recorded)")
        assert died.log_tail in str(died)
        assert died.__cause__ is not None or died.__context__ is not None  # the driver's error, kept
        started = time.perf_counter()
        try:
            async with ie.Environment() as env:  # the next environment works, on a new server
                await _query(kind, await env.enter(factory()))
        except Exception as exc:  # counted: any failure after the kill is a defect
            failures += 1
            print(f"{kind}: the environment after a kill failed: {exc!r}")
        recovered_s.append(time.perf_counter() - started)
        new = registry.status(kind, own_servers)
        assert new is not None and new.pid != pid and new.server_alive()
    recovered_s.sort()
    print(f"{kind}: {KILLS} kills, {failures} failures after them, recovery median "
          f"{recovered_s[len(recovered_s) // 2] * 1000:.0f} ms, max {recovered_s[-1] * 1000:.0f} ms")
    assert failures == 0
    # nothing of the dead servers stays: their directories went with the restarts
    state = registry.status(kind, own_servers)
    assert state is not None
    assert _server_dirs(own_servers, kind) == [Path(state.info["dir"]).name]
    # the dead servers' supervisors see them gone and exit
    assert poll_until(lambda: not _others(own_servers, kind, str(state.info["dir"])), 10)


def _server_dirs(state_dir: Path, kind: str) -> list[str]:
    return [p.name for p in state_dir.glob(f"{kind}-*")]


def _others(state_dir: Path, kind: str, live_dir: str) -> list[psutil.Process]:
    """Processes that name a server directory of ``kind`` other than the live one."""
    return [p for p in naming(f"{state_dir}/{kind}-") if not any(live_dir in arg for arg in p.info["cmdline"])]


@pytest.mark.parametrize("kind", list(FACTORIES))
async def test_a_server_killed_between_tests_fails_no_test(kind: str, own_servers: Path) -> None:
    if kind == "clickhouse" and importlib.util.find_spec("chdb") is None:
        pytest.skip("the embedded ClickHouse engine (chdb) is not installed")
    factory = FACTORIES[kind]
    for _ in range(2):
        async with ie.Environment() as env:
            await _query(kind, await env.enter(factory()))
        pid = _kill(kind, own_servers)  # nobody holds a lease now: the pooled connections are idle
        async with ie.Environment() as env:  # found dead before this test touches it, and replaced
            await _query(kind, await env.enter(factory()))
        new = registry.status(kind, own_servers)
        assert new is not None and new.pid != pid and new.server_alive()


@pytest.mark.parametrize("kind", list(FACTORIES))
async def test_a_server_that_stops_answering_fails_a_new_lease_with_lease_timeout(
    kind: str, own_servers: Path, clean_environ: pytest.MonkeyPatch
) -> None:
    if kind == "clickhouse" and importlib.util.find_spec("chdb") is None:
        pytest.skip("the embedded ClickHouse engine (chdb) is not installed")
    # the bound the stopped server meets; loose enough for a first lease on a loaded machine
    clean_environ.setenv("ISOLATED_ENV_LEASE_TIMEOUT", "5")
    factory = FACTORIES[kind]
    async with ie.Environment() as held:
        await _query(kind, await held.enter(factory()))  # so the next lease must make a new instance
        state = registry.status(kind, own_servers)
        assert state is not None
        os.kill(state.pid, signal.SIGSTOP)  # alive, accepting connections, answering nothing
        try:
            started = time.perf_counter()
            with pytest.raises(ie.LeaseTimeout) as caught:
                async with ie.Environment() as env:
                    await env.enter(factory())
            waited = time.perf_counter() - started
        finally:
            os.kill(state.pid, signal.SIGCONT)
    message = str(caught.value)
    assert isinstance(caught.value, TimeoutError)
    assert "took longer than the lease timeout (5 s)" in message, message
    assert "Raise ISOLATED_ENV_LEASE_TIMEOUT" in message and "ISOLATED_ENV_CAPACITY" in message, message
    assert waited < 15, waited  # the bound held: not a driver's own minute-long default
    async with ie.Environment() as env:  # answering again: leases work
        await _query(kind, await env.enter(factory()))
