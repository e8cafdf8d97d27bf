"""The progress line of a slow first server start reaches the user of a pytest run: it goes
through pytest's terminal reporter, outside the capture that would otherwise swallow it (the start
happens while a test is set up, when pytest captures file descriptors 1 and 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = '''
import pytest

pytestmark = pytest.mark.anyio

async def test_first(isolated_redis):
    await isolated_redis.set("k", "v")

async def test_second(isolated_redis):
    assert await isolated_redis.get("k") is None
'''
# Every start counts as slow here, so the line is due whatever the machine's speed.
CONFTEST = '''
import pytest
from isolated_env._servers import _diagnostics

_diagnostics.SLOW_START_S = 0.0

@pytest.fixture
def anyio_backend():
    return "asyncio"
'''
LINE = "isolated_env: starting embedded Redis"


def _run(project: Path, state_dir: Path, *args: str) -> str:
    (project / "test_project.py").write_text(PROJECT)
    (project / "conftest.py").write_text(CONFTEST)
    (project / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TEST_REDIS"))}
    env["ISOLATED_ENV_STATE_DIR"] = str(state_dir)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in output, output
    return output


def test_a_slow_first_start_is_shown_once_through_the_terminal(tmp_path: Path, private_state_dir: Path) -> None:
    output = _run(tmp_path, private_state_dir)
    assert output.count(LINE) == 1, output
    line = next(line for line in output.splitlines() if LINE in line)
    assert line.startswith(LINE), output  # a line of its own, not glued to the progress dots


def test_under_xdist_workers_drop_it_and_the_run_is_unharmed(tmp_path: Path, private_state_dir: Path) -> None:
    pytest.importorskip("xdist")
    # A worker's terminal is not shown and the controller starts no server: nobody prints the line
    # (docs/pytest.md says so). What matters is that it breaks nothing and never appears twice.
    output = _run(tmp_path, private_state_dir, "-n", "2")
    assert output.count(LINE) == 0, output
