"""What the library tells the user: log lines on the ``isolated_env`` logger (a server started, a
reap removed something, an escaped COMMIT was healed) and the progress line of a slow start."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import isolated_env as ie
from isolated_env._servers import _diagnostics, registry

USER = textwrap.dedent(
    """
    import logging, anyio, isolated_env as ie
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    async def main():
        async with ie.isolated_{kind}():
            pass
    anyio.run(main)
    """
)


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_start_logs_binary_version_state_dir_and_log_file(state_dir: Path, kind: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS"))}
    env["ISOLATED_ENV_STATE_DIR"] = str(state_dir)
    result = subprocess.run([sys.executable, "-c", USER.format(kind=kind)], env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if f"started the embedded {kind} server" in line]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("isolated_env INFO ")
    match = re.search(r"server (\S+) \(pid (\d+)\) in (\d+) ms: binary (.+), state dir (\S+), log (\S+)$", line)
    assert match is not None, line
    version, _pid, _ms, binary, where, log = match.groups()
    assert re.match(r"\d+\.\d+", version)
    assert Path(binary.split()[0]).is_file()
    assert where == str(state_dir)
    assert log.startswith(f"{state_dir}/{kind}-") and log.endswith(".log")


def test_the_progress_line_is_printed_once_per_kind_while_a_start_is_slow(capsys: pytest.CaptureFixture[str]) -> None:
    said = threading.Event()
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        said.set()

    _diagnostics.set_progress_sink(sink)
    try:
        with _diagnostics.progress("diag-kind", "Thing 3", "first run, builds the cache"):
            assert said.wait(30)  # a start that lasts until the line is out
        with _diagnostics.progress("diag-kind", "Thing 3"):
            threading.Event().wait(_diagnostics.SLOW_START_S * 3)
    finally:
        _diagnostics.set_progress_sink(None)
    assert lines == ["isolated_env: starting embedded Thing 3 (first run, builds the cache)…"]
    # Without a sink the line goes to stderr.
    said.clear()
    with _diagnostics.progress("diag-other-kind", "Other 1"):
        threading.Event().wait(_diagnostics.SLOW_START_S * 4)
    assert "isolated_env: starting embedded Other 1…" in capsys.readouterr().err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_reap_says_what_it_removed_and_why(state_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    statefile = state_dir / "diagkind.json"
    leftover = state_dir / "diagkind-1-2"
    statefile.write_text(json.dumps({"kind": "diagkind", "pid": _dead_pid(), "create_time": 0.0,
                                     "info": {"dir": str(leftover)}}))
    leftover.mkdir()
    with caplog.at_level(logging.INFO, logger="isolated_env"):
        removed = registry.reap("diagkind", state_dir)
    assert removed == [str(statefile), str(leftover)]
    # (only the reap's own lines: a lease heartbeat thread of another test may log meanwhile)
    messages = [r.getMessage() for r in caplog.records if r.name == "isolated_env" and "diagkind" in r.getMessage()]
    assert messages == [f"isolated_env: removed {statefile}, {leftover} (diagkind): left by embedded servers "
                        "that are no longer running"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="isolated_env"):
        assert registry.reap("diagkind", state_dir) == []
    assert not caplog.records  # nothing removed, nothing said


def test_replacing_a_dead_server_is_logged_with_the_new_start(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = _dead_pid()
    old_dir = state_dir / "diagkind-9-9"
    old_dir.mkdir()
    (state_dir / "diagkind.json").write_text(json.dumps(
        {"kind": "diagkind", "pid": dead, "create_time": 0.0, "info": {"dir": str(old_dir)}}))

    def start(directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
        # cwd: like a real server, it works in its directory (what tells it from a reused pid)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                cwd=directory)
        return proc, {"version": "1.2", "binary": sys.executable, "log": str(directory / "x.log")}

    with caplog.at_level(logging.INFO, logger="isolated_env"):
        state = registry.acquire("diagkind", state_dir, start)
    try:
        messages = [r.getMessage() for r in caplog.records if r.name == "isolated_env"]
        assert messages[0] == (f"isolated_env: removed {old_dir} (diagkind): its server (pid {dead}) is no longer "
                               "running; starting a new one")
        started = f"isolated_env: started the embedded diagkind server 1.2 (pid {state.pid}) in "
        assert messages[1].startswith(started)
        assert messages[1].endswith(f"binary {sys.executable}, state dir {state_dir}, log {state.info['dir']}/x.log")
        assert not old_dir.exists()
    finally:
        assert registry.release("diagkind", state_dir)


async def test_a_healed_escape_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="isolated_env"), pytest.raises(ie.IsolationBroken):
        async with ie.isolated_postgres() as db:
            await db.execute("COMMIT")
    heals = [r.getMessage() for r in caplog.records if r.name == "isolated_env" and "escaped" in r.getMessage()]
    assert len(heals) == 1
    text = heals[0]
    assert "escaped the outer transaction (COMMIT or ROLLBACK)" in text
    assert "healed: the work database was made a fresh copy of its template under the same name" in text
