from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def cli(*args: str, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS"))}
    if state_dir is not None:
        env["ISOLATED_ENV_STATE_DIR"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "isolated_env.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _doctor_output(stdout: str) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """The table's rows by service, and each service's details block (field -> values)."""
    table, *blocks = stdout.strip().split("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[:5] == ["service", "source", "version", "startup", "ms"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    details: dict[str, dict[str, list[str]]] = {}
    for block in blocks:
        head, *fields = block.splitlines()
        assert head.endswith(":"), block
        entry = details[head[:-1]] = {}
        for line in fields:
            if line.startswith("  "):  # a log excerpt inside a problem runs on without indentation
                name, _, value = line.strip().partition(" ")
                entry.setdefault(name, []).append(value.strip())
    return rows, details


def test_doctor_prints_a_row_and_the_details_per_service() -> None:
    # On tmpfs and world-searchable: as root the embedded PostgreSQL runs as an unprivileged user.
    state = Path(tempfile.mkdtemp(prefix="ie-doctor-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.chmod(state, 0o711)
    try:
        result = cli("doctor", "postgres", "redis", "fs", state_dir=state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    rows, details = _doctor_output(result.stdout)
    assert rows["postgres"][1] == "embedded" and rows["postgres"][-1] == "ok"
    assert rows["redis"][1] == "embedded" and rows["redis"][-1] == "ok"
    assert float(rows["fs"][2]) > 0
    for kind, binary in (("postgres", "postgres"), ("redis", "-server")):
        shown = details[kind]
        assert shown["server"][0].startswith("embedded, pid ")
        assert Path(shown["binary"][0]).is_file() and shown["binary"][0].endswith(binary)
        assert shown["version"] == [rows[kind][2]]
        assert shown["state"] == [f"dir  {state}"]
        assert shown["log"][0].startswith(f"{state}/{kind}-") and shown["log"][0].endswith(".log")
    assert details["fs"] == {"server": ["none (runs in this process)"]}
    # A first start in a fresh state directory says what it waits for, once per server it was slow for.
    assert result.stderr.count("isolated_env: starting embedded PostgreSQL") <= 1


def test_doctor_reports_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", "redis://user:hunter2@127.0.0.1:1/0")
    result = subprocess.run([sys.executable, "-m", "isolated_env.cli", "doctor", "redis"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "hunter2" not in result.stdout + result.stderr
    rows, details = _doctor_output(result.stdout)
    assert rows["redis"][1] == "unavailable"
    assert details["redis"]["problem"][0].startswith("cannot connect using TEST_REDIS_URL=redis://user:***@127.0.0.1:1/0")
    assert details["redis"]["fix"] == [
        "start the server or correct TEST_REDIS_URL; unset it to use the embedded server instead"
    ]
    assert "1 service(s) unavailable: redis" in result.stderr


def test_doctor_shows_the_fix_when_the_embedded_server_cannot_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEST_REDIS")}
    env.update(ISOLATED_ENV_STATE_DIR=str(tmp_path / "s"), ISOLATED_ENV_REDIS_SERVER="/bin/false")
    result = subprocess.run([sys.executable, "-m", "isolated_env.cli", "doctor", "redis"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 1
    _rows, details = _doctor_output(result.stdout)
    shown = details["redis"]
    assert shown["problem"][0].startswith("the embedded server exited with code 1 while starting")
    assert shown["tried"] == ["TEST_REDIS_URL / TEST_REDIS_HOST (not set)"]
    assert "point TEST_REDIS_URL at a running server" in shown["fix"][0]
    assert shown["state"] == [f"dir  {tmp_path / 's'}"]


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


def test_prune_narrowed_and_dry_run(shared_servers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``prune --run ID`` / ``--mine`` narrow what goes, ``--dry-run`` lists it: a database of another
    machine's run whose lease ended goes only when its run is named (or nothing narrows)."""
    import anyio

    from isolated_env._config import resolve
    from isolated_env._drivers import asyncpg as driver
    from isolated_env._ownership import Owner, me
    from isolated_env._servers import postgres as pg_servers

    run = "zp" + os.urandom(3).hex()
    name = f"ie_db_{run}_1_1"
    monkeypatch.setenv("TEST_POSTGRES_URL", shared_servers["TEST_POSTGRES_URL"])  # a server nobody else reaps

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "isolated_env.cli", *args], capture_output=True, text=True,
                              timeout=300)

    async def sql(statement: str) -> list[str]:
        server = await pg_servers.ensure_server(resolve())
        admin = await driver.connect(server)
        try:
            await admin.execute(statement) if statement else None
            return [r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")]
        finally:
            await driver.close(admin)

    label = Owner("0therm4chine", me().pidns, 999_999, 0, run).label(exp=1.0)  # ended long ago
    anyio.run(sql, f"CREATE DATABASE {name}")
    try:
        anyio.run(sql, f"COMMENT ON DATABASE {name} IS '{label}'")
        listed = cli("prune", "--run", run, "--dry-run")
        assert listed.returncode == 0 and f"would remove {name}" in listed.stdout, listed.stdout + listed.stderr
        assert "prune: fs: skipped" not in listed.stderr and "prune: redis: skipped" not in listed.stderr
        assert name not in cli("prune", "--mine", "--dry-run").stdout  # another machine's
        assert name not in cli("prune", "--run", run + "x").stdout
        assert name in anyio.run(sql, "")
        removed = cli("prune", "--run", run)
        assert f"removed {name}" in removed.stdout, removed.stdout + removed.stderr
        assert name not in anyio.run(sql, "")
    finally:
        anyio.run(sql, f"DROP DATABASE IF EXISTS {name}")
