"""The embedded servers' TCP switches (``ISOLATED_ENV_POSTGRES_TCP``, ``ISOLATED_ENV_REDIS_TCP``) and
the handles' ``.host``/``.port`` for code that dials host:port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import isolated_env as ie

USER = textwrap.dedent(
    """
    import json, socket, anyio, asyncpg, redis.asyncio as aredis, isolated_env as ie
    async def main():
        out = {}
        async with ie.isolated_redis() as r, ie.isolated_postgres() as db:
            out["redis"] = [r.host, r.port]
            out["postgres"] = [db.host, db.port]
            if r.host is not None:
                await r.set("via", "socket")
                other = aredis.Redis(host=r.host, port=r.port, db=r.db, password=r.password)
                try:
                    out["redis_over_tcp"] = (await other.get("via")).decode()
                finally:
                    await other.aclose()
            if db.host is not None:
                conn = await asyncpg.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                                             database=db.database)
                try:
                    out["postgres_over_tcp"] = [str(await conn.fetchval("SELECT inet_server_addr()")),
                                                await conn.fetchval("SELECT current_database()")]
                finally:
                    await conn.close()
            out["database"] = db.database
        print(json.dumps(out))
    anyio.run(main)
    """
)


def _run(state_dir: Path, **switches: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "ISOLATED_ENV_"))}
    env.update(ISOLATED_ENV_STATE_DIR=str(state_dir), **switches)
    result = subprocess.run([sys.executable, "-c", USER], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_on_unix_sockets_only_the_handles_have_no_host_or_port(state_dir: Path) -> None:
    found = _run(state_dir)
    assert found["redis"] == [None, None]
    assert found["postgres"] == [None, None]


def test_the_tcp_switches_make_both_servers_reachable_on_loopback(state_dir: Path) -> None:
    found = _run(state_dir, ISOLATED_ENV_REDIS_TCP="1", ISOLATED_ENV_POSTGRES_TCP="yes")
    redis_host, redis_port = found["redis"]  # type: ignore[misc]
    pg_host, pg_port = found["postgres"]  # type: ignore[misc]
    assert redis_host == pg_host == "127.0.0.1"
    assert isinstance(redis_port, int) and isinstance(pg_port, int) and redis_port != pg_port
    # The same logical database over TCP as the handle's own client (on the socket) uses ...
    assert found["redis_over_tcp"] == "socket"
    # ... and the same PostgreSQL database, reached over TCP (a socket session has no server address).
    assert found["postgres_over_tcp"] == ["127.0.0.1", found["database"]]


def test_the_redis_switch_resolves_like_the_postgres_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOLATED_ENV_REDIS_TCP", raising=False)
    assert ie.resolve().redis_tcp is False
    monkeypatch.setenv("ISOLATED_ENV_REDIS_TCP", "on")
    assert ie.resolve().redis_tcp is True
    monkeypatch.setenv("ISOLATED_ENV_REDIS_TCP", "sometimes")
    with pytest.raises(ie.ConfigError, match="ISOLATED_ENV_REDIS_TCP='sometimes' is not a boolean"):
        ie.resolve()
