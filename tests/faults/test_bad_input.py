"""Bad input gets a clear error that names the variable and the fix, in seconds: a state directory
that cannot be written or that another user could have planted, a misspelt or wrong setting, and
external servers that accept a connection and never answer."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import isolated_env as ie
from isolated_env._servers import registry

NOBODY = 65534


@pytest.fixture
def scratch() -> Iterator[Path]:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="ie-bad-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path)


async def _refused(monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> str:
    """The ConfigError a Redis lease gets with ``state_dir`` as ISOLATED_ENV_STATE_DIR."""
    monkeypatch.setenv("ISOLATED_ENV_STATE_DIR", str(state_dir))
    with pytest.raises(ie.ConfigError) as info:
        async with ie.isolated_redis():
            pass
    message = str(info.value)
    assert "ISOLATED_ENV_STATE_DIR" in message
    return message


async def test_a_state_dir_that_cannot_be_written_is_a_config_error(
    clean_environ: pytest.MonkeyPatch, scratch: Path
) -> None:
    a_file = scratch / "file"
    a_file.write_text("")
    message = await _refused(clean_environ, a_file / "state")
    assert "cannot be created or used as a directory" in message and "set ISOLATED_ENV_STATE_DIR to" in message
    message = await _refused(clean_environ, Path("/proc/isolated-env-state"))
    assert "cannot be created" in message


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user's needs root")


@needs_root
async def test_a_state_dir_of_another_user_is_refused_before_anything_in_it_is_trusted(
    clean_environ: pytest.MonkeyPatch, scratch: Path
) -> None:
    # What finding 2 planted: a state file whose dead server's "directory" is one of ours.
    victim = scratch / "victim"
    victim.mkdir()
    squatted = scratch / "squatted"
    squatted.mkdir(mode=0o755)
    (squatted / "redis.json").write_text(registry.ServerState(
        kind="redis", pid=2**22 - 1, create_time=0.0, info={"dir": str(victim)}).to_json())
    os.chown(squatted, NOBODY, NOBODY)
    message = await _refused(clean_environ, squatted)
    assert "belongs to uid 65534" in message and f"rm -r {squatted}" in message
    assert victim.is_dir()
    # a symlink planted by another user, to a directory of ours, is theirs too
    mine = scratch / "mine"
    mine.mkdir(mode=0o711)
    link = scratch / "link"
    link.symlink_to(mine)
    os.lchown(link, NOBODY, NOBODY)
    assert "belongs to uid 65534" in await _refused(clean_environ, link)


async def test_a_state_dir_others_can_write_is_refused(clean_environ: pytest.MonkeyPatch, scratch: Path) -> None:
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    message = await _refused(clean_environ, shared)
    assert "is writable by other users (mode 0777)" in message and f"chmod 0711 {shared}" in message


@pytest.mark.parametrize(("name", "meant"), [
    ("ISOLATED_ENV_REDIS_SEVRER", "ISOLATED_ENV_REDIS_SERVER"),
    ("ISOLATED_ENV_POSTGRES_BINDR", "ISOLATED_ENV_POSTGRES_BINDIR"),
    ("ISOLATED_ENV_STATEDIR", "ISOLATED_ENV_STATE_DIR"),
])
def test_a_misspelt_setting_is_named_with_the_one_meant(clean_environ: pytest.MonkeyPatch, name: str,
                                                        meant: str) -> None:
    clean_environ.setenv(name, "/usr/bin")
    # An explicit argument resolves afresh; a process's settings without one are answered from a
    # cache keyed on the settings' variables and the environment's size (see the next test).
    with pytest.raises(ie.ConfigError, match=f"{name} is not a setting of isolated_env and would be ignored; "
                                             f"did you mean {meant}"):
        ie.resolve(profile="dev")


def test_a_misspelt_setting_fails_a_run_at_its_first_resolution(clean_environ: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "ISOLATED_ENV_REDIS_SEVRER": "/usr/bin/redis-server"}
    run = subprocess.run([sys.executable, "-c", "import isolated_env as ie; ie.resolve()"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "ConfigError: ISOLATED_ENV_REDIS_SEVRER is not a setting of isolated_env" in run.stderr, run.stderr
    assert "did you mean ISOLATED_ENV_REDIS_SERVER?" in run.stderr


def test_a_setting_naming_a_missing_program_is_a_config_error(clean_environ: pytest.MonkeyPatch) -> None:
    clean_environ.setenv("ISOLATED_ENV_REDIS_SERVER", "/usr/bin/redis-sevrer")
    with pytest.raises(ie.ConfigError, match="ISOLATED_ENV_REDIS_SERVER='/usr/bin/redis-sevrer' does not exist; "
                                             "set it to a redis-server or valkey-server binary"):
        ie.resolve()
    clean_environ.delenv("ISOLATED_ENV_REDIS_SERVER")
    clean_environ.setenv("ISOLATED_ENV_POSTGRES_BINDIR", "/usr/lib/postgresql/51/bin")
    with pytest.raises(ie.ConfigError, match="ISOLATED_ENV_POSTGRES_BINDIR='/usr/lib/postgresql/51/bin' is not a "
                                             "directory; set ISOLATED_ENV_POSTGRES_BINDIR to a directory holding"):
        ie.resolve()


async def test_servers_that_accept_and_never_answer_fail_in_seconds(clean_environ: pytest.MonkeyPatch) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes every handshake; nothing ever reads or replies
    port = silent.getsockname()[1]
    urls = {
        "TEST_POSTGRES_URL": (ie.isolated_postgres, f"postgresql://app:pw@127.0.0.1:{port}/app"),
        "TEST_REDIS_URL": (ie.isolated_redis, f"redis://127.0.0.1:{port}/0"),
        "TEST_CLICKHOUSE_URL": (ie.isolated_clickhouse, f"http://default:pw@127.0.0.1:{port}"),
    }
    for var, (_factory, url) in urls.items():
        clean_environ.setenv(var, url)
    messages: dict[str, str] = {}

    async def lease(var: str) -> None:
        with pytest.raises(ie.ServiceUnavailable) as info:
            async with urls[var][0]():
                pass
        messages[var] = str(info.value)

    try:
        with anyio.fail_after(8):  # each gives up after 4 s: the drivers' own defaults wait a minute
            async with anyio.create_task_group() as tg:
                for var in urls:
                    tg.start_soon(lease, var)
    finally:
        silent.close()
    for var, message in messages.items():
        assert f"{var}=" in message and f"correct {var}" in message, message
        assert "no answer within 4 s" in message or "Timeout" in message, message
    assert len(messages) == 3
