"""Nothing read from a state file is trusted (finding 2), and a corrupted one does not orphan its
server (finding 10): real servers, real processes, files planted the way another local user would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from _helpers import child_env

from isolated_env._servers import registry
from isolated_env._servers._statefile import CorruptState, read_state

USE_REDIS = textwrap.dedent(
    """
    import anyio, isolated_env as ie
    async def main():
        async with ie.isolated_redis() as r:
            await r.set("k", "v")
            assert await r.get("k") == b"v"
    anyio.run(main)
    """
)


def _run(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=child_env(state_dir), capture_output=True, text=True,
                          timeout=120)


def _use_redis(state_dir: Path) -> None:
    done = _run(state_dir, "-c", USE_REDIS)
    assert done.returncode == 0, done.stderr


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(state_dir: Path, **fields: object) -> None:
    state = {"kind": "redis", "pid": _dead_pid(), "create_time": 0.0, "info": {}, **fields}
    (state_dir / "redis.json").write_text(json.dumps(state))


@pytest.mark.parametrize("how", ["outside", "dot-dot", "symlink"])
def test_a_planted_directory_outside_the_state_dir_survives(
    private_state_dir: Path, tmp_path: Path, how: str
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    named = {
        "outside": str(precious),
        "dot-dot": f"{private_state_dir}/redis-1/../../{precious.relative_to('/')}".replace("//", "/"),
        "symlink": str(private_state_dir / "redis-evil"),
    }[how]
    if how == "symlink":
        (private_state_dir / "redis-evil").symlink_to(precious)
    _plant(private_state_dir, info={"dir": named})
    _use_redis(private_state_dir)
    assert (precious / "data").read_text() == "keep me"
    # the prune path reads the same state files: it removes the planted link, never its target
    registry.reap("redis", private_state_dir)
    assert (precious / "data").read_text() == "keep me"


def test_a_planted_live_process_is_never_signalled(private_state_dir: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        proc = psutil.Process(victim.pid)
        server_dir = private_state_dir / "redis-1-1"
        server_dir.mkdir()
        # Everything a reader could check without the server's own identity is right: the pid
        # is alive, its start time and executable match.
        _plant(private_state_dir, pid=victim.pid, create_time=proc.create_time(), stop_signal="SIGKILL",
               info={"dir": str(server_dir), "exe": proc.exe()})
        assert registry.status("redis", private_state_dir) is not None
        assert not registry.status("redis", private_state_dir).server_alive()  # type: ignore[union-attr]
        _use_redis(private_state_dir)  # a server of our own is started instead
        _plant(private_state_dir, pid=victim.pid, create_time=proc.create_time(), stop_signal="SIGKILL",
               info={"dir": str(server_dir), "exe": proc.exe()})
        down = _run(private_state_dir, "-m", "isolated_env.cli", "down", "redis")
        assert down.returncode == 0, down.stderr
        time.sleep(0.2)
        assert victim.poll() is None, "a process named by a planted state file was signalled"
    finally:
        victim.kill()
        victim.wait()


def test_a_planted_symlink_is_never_written_through(private_state_dir: Path, tmp_path: Path) -> None:
    targets = {}
    for name in ("redis.tmp", "redis.json.tmp", "redis.json", "redis.lock"):
        target = tmp_path / f"target-{name}"
        target.write_text("untouched")
        (private_state_dir / name).symlink_to(target)
        targets[name] = target
    _use_redis(private_state_dir)
    for name, target in targets.items():
        assert target.read_text() == "untouched", f"written through the planted {name}"
    assert not (private_state_dir / "redis.json").is_symlink()


@pytest.mark.parametrize("text", ['{"kind": "redis", "pid": 12', "[]", '{"kind": "redis"}', "\x00\xff"])
def test_a_state_file_that_does_not_parse_is_corrupt(tmp_path: Path, text: str) -> None:
    (tmp_path / "redis.json").write_text(text, errors="surrogateescape")
    with pytest.raises(CorruptState):
        read_state(tmp_path / "redis.json", "redis")


def test_a_state_naming_files_outside_the_state_dir_is_corrupt(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    server_dir = state_dir / "clickhouse-1"
    server_dir.mkdir(parents=True)
    for info in ({"dir": str(server_dir), "password_file": "/etc/shadow"},
                 {"dir": str(server_dir), "log": str(tmp_path / "other.log")},
                 {"dir": str(server_dir), "unix_socket": str(server_dir / ".." / ".." / "x.sock")},
                 {"dir": str(server_dir), "host": "/tmp"},
                 {"dir": str(state_dir / "redis-1")}):
        (state_dir / "clickhouse.json").write_text(json.dumps(
            {"kind": "clickhouse", "pid": 1, "create_time": 0.0, "info": info}))
        with pytest.raises(CorruptState):
            read_state(state_dir / "clickhouse.json", "clickhouse")


PIN_AND_CORRUPT = textwrap.dedent(
    """
    import sys
    from isolated_env.cli import main
    sys.exit(main(["up", "redis"]))
    """
)


def test_a_corrupted_state_file_does_not_orphan_its_pinned_server(private_state_dir: Path) -> None:
    up = _run(private_state_dir, "-c", PIN_AND_CORRUPT)
    assert up.returncode == 0, up.stderr
    statefile = private_state_dir / "redis.json"
    pid = json.loads(statefile.read_text())["pid"]
    statefile.write_text(statefile.read_text()[:40])  # truncated, as by a full disk
    status = _run(private_state_dir, "-m", "isolated_env.cli", "status", "--json", "redis")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["redis"]["pid"] == pid  # found and adopted
    assert json.loads(status.stdout)["redis"]["pinned"] is True
    _use_redis(private_state_dir)  # tests run on the adopted server
    assert psutil.pid_exists(pid)
    statefile.write_text("{")
    down = _run(private_state_dir, "-m", "isolated_env.cli", "down", "redis")
    assert down.returncode == 0, down.stderr
    assert "redis: stopped" in down.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not list(private_state_dir.glob("redis-*"))


def test_a_server_no_state_names_is_found_and_stopped(private_state_dir: Path) -> None:
    up = _run(private_state_dir, "-c", PIN_AND_CORRUPT)
    assert up.returncode == 0, up.stderr
    state = json.loads((private_state_dir / "redis.json").read_text())
    server_dir = Path(state["info"]["dir"])
    # the worst case: the state file is garbage and the server's own record is gone too
    (server_dir / "server.json").unlink()
    (private_state_dir / "redis.json").write_text("garbage")
    down = _run(private_state_dir, "-m", "isolated_env.cli", "down", "redis")
    assert down.returncode == 0, down.stderr
    assert "redis: not running" in down.stdout  # nothing to adopt: the orphan was stopped instead
    assert not psutil.pid_exists(state["pid"])
