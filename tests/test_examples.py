"""The examples are the docs that run: the main job must work as the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_example_suite_and_prints_timings() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "run_demo.py")], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "25 passed" in result.stdout
    assert "median setup+teardown per later test" in result.stdout
    assert "test_every_test_starts_from_nothing[asyncio-19]" in result.stdout


def test_quickstart_from_the_readme_runs() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "clickhouse rows=1, ws reply=ack" in result.stdout
    assert "http={'id': 1}" in result.stdout
