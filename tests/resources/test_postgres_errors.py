"""Driver failures on our own paths come out as our errors (``_drivers.asyncpg.translate``); the
test's own queries keep asyncpg's."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest

import isolated_env as ie
from isolated_env._contract import current_settings
from isolated_env._drivers import asyncpg as driver
from isolated_env._servers.postgres import PostgresServer, ensure_server

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connection_is_service_unavailable_naming_server_and_fix() -> None:
    port = _closed_port()
    server = PostgresServer(source="external", version="16", host="127.0.0.1", port=port, user="app",
                            password="s3cret", database="app")
    with pytest.raises(ie.ServiceUnavailable) as info:
        await driver.connect(server)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "Fix:" in message and "accepts connections" in message
    assert "s3cret" not in message and ":***@" in message
    assert isinstance(info.value.__cause__, OSError)


async def test_other_driver_errors_become_the_given_error_with_the_cause() -> None:
    server = await ensure_server(current_settings())
    conn = await driver.connect(server)
    try:
        with pytest.raises(ie.TeardownError, match="cannot drop things on here: UndefinedTableError") as info:
            with driver.translate("drop things on", "here", failure=ie.TeardownError):
                await conn.execute("DROP TABLE no_such_table")
        assert isinstance(info.value.__cause__, asyncpg.UndefinedTableError)
        with pytest.raises(ie.ServiceUnavailable) as unavailable:
            with driver.translate("drop things on", "here"):
                await conn.execute("DROP TABLE no_such_table")
        assert isinstance(unavailable.value.__cause__, asyncpg.UndefinedTableError)
        ours = ie.TemplateError("already ours")
        with pytest.raises(ie.TemplateError) as passed:
            with driver.translate("build on", "here", failure=ie.TeardownError):
                raise ours
        assert passed.value is ours
    finally:
        await driver.close(conn)


async def test_reset_on_a_killed_connection_is_our_error_and_the_next_test_works() -> None:
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres())
        # the superuser may end other sessions (the test role may not)
        admin = await asyncpg.connect(**(await ensure_server(current_settings())).connect_kwargs())
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", db.get_server_pid())
        finally:
            await admin.close()
        await anyio.sleep(0.05)
        with pytest.raises(ie.IsolatedEnvError) as info:
            await env.reset()
        cause = info.value.__cause__
        assert isinstance(cause, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError))
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT 1") == 1


def test_importing_the_driver_module_imports_no_asyncpg_and_a_missing_one_is_named() -> None:
    code = (
        "import sys\n"
        "import isolated_env._drivers.asyncpg as driver\n"
        "assert 'asyncpg' not in sys.modules\n"
        "sys.modules['asyncpg'] = None  # as if it were not installed\n"
        "try:\n"
        "    driver.module()\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.startswith("MissingDependencyError") and "isolated-env[postgres]" in result.stdout
