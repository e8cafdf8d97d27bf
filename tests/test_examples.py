"""The examples are the docs that run: the main job must work as the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(script: str) -> str:
    """Run ``examples/<script>`` as a user would; its output, after checking it succeeded."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_demo_runs_the_example_suite_and_prints_timings() -> None:
    out = run_example("run_demo.py")
    assert "25 passed" in out
    assert "median setup+teardown per later test" in out
    assert "test_every_test_starts_from_nothing[asyncio-19]" in out


def test_quickstart_from_the_readme_runs() -> None:
    out = run_example("quickstart.py")
    assert "clickhouse rows=1, ws reply=ack" in out
    assert "http={'id': 1}" in out
