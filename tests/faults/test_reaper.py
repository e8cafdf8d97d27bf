"""The reaper that needs no next run (finding 8): embedded servers stop themselves once no live
user remains, even when every user was SIGKILLed; a pinned server stays; a normal run leaves no
supervisor behind. Real servers and a real SIGKILL, in a state directory of their own, with a
short grace period (ISOLATED_ENV_REAP_AFTER)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from _helpers import child_env

from isolated_env._servers import registry
from isolated_env._servers._process import naming, poll_until

KINDS = ["postgres", "redis"] + (["clickhouse"] if importlib.util.find_spec("chdb") else [])

USER = textwrap.dedent(
    """
    import sys, anyio, isolated_env as ie
    async def main():
        async with ie.Environment() as env:
            for kind in sys.argv[2:]:  # "redis", or "redis:admin" for isolated_redis(admin=True)
                kind, _, option = kind.partition(":")
                await env.enter(getattr(ie, f"isolated_{kind}")(**({option: True} if option else {})))
            print("ready", flush=True)
            if sys.argv[1] == "hold":
                await anyio.sleep(120)
    anyio.run(main)
    """
)


def _env(state_dir: Path) -> dict[str, str]:
    return child_env(state_dir, ISOLATED_ENV_REAP_AFTER="2")


def _ours(state_dir: Path) -> list[psutil.Process]:
    """Every process (server, supervisor) that names the state directory."""
    return naming(str(state_dir))


def _server_pids(state_dir: Path) -> list[int]:
    return [json.loads((state_dir / f"{kind}.json").read_text())["pid"] for kind in KINDS]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_servers_of_a_sigkilled_run_stop_themselves(private_state_dir: Path) -> None:
    user = subprocess.Popen([sys.executable, "-c", USER, "hold", *KINDS], env=_env(private_state_dir),
                            stdout=subprocess.PIPE, text=True)
    assert user.stdout is not None
    try:
        assert user.stdout.readline() == "ready\n"
        pids = _server_pids(private_state_dir)
        assert all(psutil.pid_exists(pid) for pid in pids)
        assert len(_ours(private_state_dir)) >= 2 * len(KINDS)  # each server and its supervisor
    finally:
        user.kill()
        user.wait()
        user.stdout.close()
    # within the 30 s bound (grace 2 s here): servers, supervisors, directories, state files gone
    assert poll_until(lambda: not _ours(private_state_dir), 30, most=0.2), [p.info for p in _ours(private_state_dir)]
    assert poll_until(lambda: not any(_running(pid) for pid in pids), 10)
    assert poll_until(lambda: not [p for p in private_state_dir.iterdir() if p.name.split("-")[0] in KINDS
                                   and (p.is_dir() or p.suffix == ".json")], 10)


@pytest.mark.parametrize("asked", ["redis:admin", "postgres:superuser"])
def test_a_private_server_of_a_sigkilled_test_stops_itself(private_state_dir: Path, asked: str) -> None:
    kind = asked.partition(":")[0]
    user = subprocess.Popen([sys.executable, "-c", USER, "hold", asked], env=_env(private_state_dir),
                            stdout=subprocess.PIPE, text=True)
    assert user.stdout is not None
    try:
        assert user.stdout.readline() == "ready\n"
        (directory,) = (private_state_dir / "private").glob(f"{kind}-*")
        pid = json.loads((directory / "server.json").read_text())["pid"]
        assert _running(pid) and not (private_state_dir / f"{kind}.json").exists()  # not the shared server
        assert poll_until(lambda: len(_ours(private_state_dir)) == 2, 10)  # it and its supervisor
        registry.reap(kind, private_state_dir)  # the shared server's reaper: never takes it for a leftover
        assert _running(pid) and directory.is_dir()
    finally:
        user.kill()
        user.wait()
        user.stdout.close()
    # the same bound as the shared servers (grace 2 s here): server, supervisor and directory gone
    assert poll_until(lambda: not _running(pid), 30, most=0.2)
    assert poll_until(lambda: not _ours(private_state_dir), 10), [p.info for p in _ours(private_state_dir)]
    assert poll_until(lambda: not directory.exists(), 10)


def test_a_pinned_server_outlives_its_grace_and_a_normal_run_leaves_no_supervisor(private_state_dir: Path) -> None:
    env = {**_env(private_state_dir), "ISOLATED_ENV_REAP_AFTER": "1"}
    up = subprocess.run([sys.executable, "-m", "isolated_env.cli", "up", "redis"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    pinned = json.loads((private_state_dir / "redis.json").read_text())["pid"]
    run = subprocess.run([sys.executable, "-c", USER, "quick", "redis", "postgres"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # postgres was left by its last user: it and its supervisor are gone at once, not after a grace
    assert poll_until(lambda: not [p for p in _ours(private_state_dir)
                                   if any("postgres-" in a for a in p.info["cmdline"] or [])], 5)
    # the pinned server is still up after several grace periods, with its supervisor
    assert not poll_until(lambda: not psutil.pid_exists(pinned), 3, most=0.5)
    assert len(_ours(private_state_dir)) == 2
    down = subprocess.run([sys.executable, "-m", "isolated_env.cli", "down", "redis"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert "redis: stopped" in down.stdout, down.stdout + down.stderr
    assert poll_until(lambda: not _ours(private_state_dir), 5)


def test_a_bad_grace_period_is_refused_before_anything_starts(private_state_dir: Path) -> None:
    env = {**_env(private_state_dir), "ISOLATED_ENV_REAP_AFTER": "soon"}
    run = subprocess.run([sys.executable, "-c", USER, "quick", "redis"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert "ISOLATED_ENV_REAP_AFTER='soon'" in run.stderr
    assert not _ours(private_state_dir)


@pytest.mark.parametrize("kind", ["redis"])
def test_the_supervisor_is_nobodys_child(private_state_dir: Path, kind: str) -> None:
    user = subprocess.Popen([sys.executable, "-c", USER, "hold", kind], env=_env(private_state_dir),
                            stdout=subprocess.PIPE, text=True)
    assert user.stdout is not None
    try:
        assert user.stdout.readline() == "ready\n"
        # its launcher exits at once, after forking the supervisor off: never a zombie child of the
        # user, never a child its leak check would count
        def supervisors() -> list[psutil.Process]:
            return [p for p in _ours(private_state_dir) if "_supervisor" in " ".join(p.info["cmdline"])]

        def forked_off() -> bool:  # one look: its launcher may still be between fork and exit
            found = supervisors()
            try:
                return len(found) == 1 and found[0].ppid() != user.pid
            except psutil.NoSuchProcess:
                return False

        assert poll_until(forked_off, 10)
        assert supervisors()[0].pid not in {c.pid for c in psutil.Process(user.pid).children()}
    finally:
        user.terminate()
        user.wait()
        user.stdout.close()
    assert poll_until(lambda: not _ours(private_state_dir), 15)
