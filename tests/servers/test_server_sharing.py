"""Embedded servers are shared by processes, stopped by the last one to leave, and survive
(then clean up after) a user that was SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

USER = textwrap.dedent(
    """
    import os, sys, time, anyio, isolated_env as ie
    async def main():
        async with ie.isolated_{kind}() as h:
            print(os.getpid(), flush=True)
            if sys.argv[1] == "hold":
                await anyio.sleep(60)
    anyio.run(main)
    """
)


def _state(state_dir: Path, kind: str) -> dict[str, object] | None:
    path = state_dir / f"{kind}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _spawn(kind: str, mode: str, state_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "ISOLATED_ENV_STATE_DIR": str(state_dir)}
    env = {k: v for k, v in env.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS"))}
    return subprocess.Popen([sys.executable, "-c", USER.format(kind=kind), mode], env=env,
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_last_user_stops_the_server(state_dir: Path, kind: str) -> None:
    tmp_path = state_dir
    holder = _spawn(kind, "hold", tmp_path)
    assert holder.stdout is not None
    holder.stdout.readline()
    state = _state(tmp_path, kind)
    assert state is not None
    server_pid = int(state["pid"])  # type: ignore[call-overload]
    # a second process joins the same server instead of starting one
    joiner = _spawn(kind, "quick", tmp_path)
    joiner.communicate(timeout=60)
    assert joiner.returncode == 0
    assert psutil.pid_exists(server_pid)
    # ... and the last one to leave stops it and removes its data
    holder.send_signal(signal.SIGINT)
    holder.wait(timeout=60)
    holder.stdout.close()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(server_pid) and psutil.Process(server_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "server still running after its last user left"
        time.sleep(0.02)
    assert _state(tmp_path, kind) is None
    assert not any(p.name.startswith(f"{kind}-") for p in tmp_path.iterdir())


def test_killed_user_is_pruned_and_a_dead_server_replaced(state_dir: Path) -> None:
    tmp_path = state_dir
    victim = _spawn("redis", "hold", tmp_path)
    assert victim.stdout is not None
    victim_pid = int(victim.stdout.readline())
    state = _state(tmp_path, "redis")
    assert state is not None and [u["pid"] for u in state["users"]] == [victim_pid]  # type: ignore[index,union-attr]
    server_pid = int(state["pid"])  # type: ignore[call-overload]
    victim.kill()
    victim.wait()
    victim.stdout.close()
    # the next run reuses the orphaned server, prunes the dead user, and stops it when done
    nxt = _spawn("redis", "quick", tmp_path)
    nxt.communicate(timeout=60)
    assert nxt.returncode == 0
    assert _state(tmp_path, "redis") is None
    time.sleep(0.2)
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
    # a state file whose server is gone (machine rebooted, server killed) is replaced
    (tmp_path / "redis.json").write_text(json.dumps(
        {"kind": "redis", "pid": 999999, "create_time": 1.0, "info": {"dir": str(tmp_path / "redis-stale")},
         "users": [], "pinned": False, "startup_ms": 1.0}))
    (tmp_path / "redis-stale").mkdir()
    again = _spawn("redis", "quick", tmp_path)
    again.communicate(timeout=60)
    assert again.returncode == 0
    assert not (tmp_path / "redis-stale").exists()


def test_two_kinds_start_at_once_in_one_process_and_one_kind_once(state_dir: Path) -> None:
    """The pytest plugin starts a run's servers together, one thread each: a start of one kind must
    not wait for another kind's (each start below waits for the other at a barrier, so run one
    after the other they fail), and two threads joining one kind start it once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from isolated_env._servers import registry

    both_starting = threading.Barrier(2, timeout=20)
    starts: list[str] = []

    def starter(kind: str):  # type: ignore[no-untyped-def]
        def start(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
            starts.append(kind)
            both_starting.wait()
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                    cwd=directory)
            return proc, {"version": "1", "binary": sys.executable, "log": str(directory / "x.log")}

        return start

    kinds = ["kind-a", "kind-b", "kind-a"]
    try:
        with ThreadPoolExecutor(3) as pool:
            states = list(pool.map(lambda kind: registry.acquire(kind, state_dir, starter(kind)), kinds))
        assert sorted(starts) == ["kind-a", "kind-b"]
        assert states[0].pid == states[2].pid != states[1].pid
    finally:
        for kind in ("kind-a", "kind-b"):
            assert registry.release(kind, state_dir)
