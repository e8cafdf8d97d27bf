from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS"))}
    if state_dir is not None:
        env["ISOLATED_ENV_STATE_DIR"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "isolated_env.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_doctor_prints_a_row_per_service() -> None:
    result = cli("doctor", "postgres", "redis", "fs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["service", "source", "version", "startup", "ms"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["postgres"][1] == "embedded" and rows["postgres"][-1] == "ok"
    assert rows["redis"][1] == "embedded" and rows["redis"][-1] == "ok"
    assert float(rows["fs"][2]) > 0


def test_doctor_reports_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    result = subprocess.run([sys.executable, "-m", "isolated_env.cli", "doctor", "redis"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "unavailable" in result.stdout and "TEST_REDIS_URL" in result.stdout


def test_up_status_down_keep_a_server_warm(tmp_path: Path) -> None:
    state = tmp_path / "s"
    up = cli("up", "redis", state_dir=state)
    assert up.returncode == 0 and "kept warm" in up.stdout, up.stderr
    status = cli("status", "redis", "--json", state_dir=state)
    assert '"redis"' in status.stdout and '"pinned": true' in status.stdout
    # a test run joins the warm server instead of starting one
    probe = subprocess.run(
        [sys.executable, "-c",
         "import anyio, isolated_env as ie\n"
         "async def m():\n"
         "    async with ie.isolated_redis() as r: print(r.server.reused)\n"
         "anyio.run(m)"],
        capture_output=True, text=True, env={**os.environ, "ISOLATED_ENV_STATE_DIR": str(state)}, timeout=120,
    )
    assert probe.stdout.strip() == "True", probe.stderr
    down = cli("down", "redis", state_dir=state)
    assert "stopped" in down.stdout
    assert "no embedded server is running" in cli("status", state_dir=state).stdout


def test_prune_runs() -> None:
    result = cli("prune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_unknown_service_is_a_usage_error() -> None:
    result = cli("doctor", "mongodb")
    assert result.returncode == 2 and "unknown service 'mongodb'" in result.stderr
