"""Sessions carried over to the next event loop on TCP (a server reached at host:port, as
``TEST_POSTGRES_URL`` gives one): asyncpg's default ``sslmode=prefer`` first asks for TLS, and a
plaintext session is taken over with that step answered as the server answered it. A server of
this module's own, listening on 127.0.0.1 (``ISOLATED_ENV_POSTGRES_TCP``)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from isolated_env._config import resolve
from isolated_env._drivers import asyncpg_sessions
from isolated_env._servers import postgres, registry


@pytest.fixture(scope="module")
def tcp_kwargs() -> Iterator[dict[str, Any]]:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    state_dir = Path(tempfile.mkdtemp(prefix="ie-tcp-", dir=base))
    state_dir.chmod(0o711)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ISOLATED_ENV_POSTGRES_TCP", "1")
            settings = resolve(state_dir=state_dir)
        server = postgres.embedded.join(settings)
        assert server.address is not None
        host, port = server.address
        yield {**server.connect_kwargs(), "host": host, "port": port, "timeout": 30}
    finally:
        asyncpg_sessions.close_all()
        registry.release("postgres", state_dir)
        postgres.PROVIDER.forget()
        shutil.rmtree(state_dir)


def _in_a_new_loop(fn: Any) -> Any:
    with asyncio.Runner() as runner:
        return runner.run(fn())


def test_a_tcp_session_carries_over_to_the_next_loop_clean(tcp_kwargs: dict[str, Any]) -> None:
    async def dirty() -> int:
        conn = await asyncpg_sessions.connect(asyncpg, tcp_kwargs)
        await conn.fetchval("SELECT $1::int", 1)  # a prepared statement, which ROLLBACK would not drop
        await conn.execute("SET application_name = 'dirty'")
        pid = int(conn.get_server_pid())
        assert await asyncpg_sessions.park(conn)
        return pid

    async def look() -> tuple[int, int, int, str, str]:
        conn = await asyncpg_sessions.connect(asyncpg, tcp_kwargs)
        try:
            return (conn.get_server_pid(), await conn.fetchval("SELECT pg_backend_pid()"),
                    await conn.fetchval("SELECT count(*) FROM pg_prepared_statements"),
                    await conn.fetchval("SHOW application_name"),
                    await conn.fetchval("SELECT client_addr::text FROM pg_stat_activity WHERE pid = pg_backend_pid()"))
        finally:
            await conn.close()

    first = _in_a_new_loop(dirty)
    assert asyncpg_sessions.parked() >= 1
    told, real, prepared, name, addr = _in_a_new_loop(look)
    assert told == real == first  # the same server session, over TCP, taken over by the new loop
    assert prepared <= 2 and name != "dirty"  # DISCARD ALL left nothing of the last loop's session
    assert addr.startswith("127.0.0.1")


def test_a_tcp_session_is_parked_again_and_again(tcp_kwargs: dict[str, Any]) -> None:
    async def one() -> int:
        conn = await asyncpg_sessions.connect(asyncpg, tcp_kwargs)
        assert await conn.fetchval("SELECT 1") == 1
        pid = int(conn.get_server_pid())
        assert await asyncpg_sessions.park(conn)
        return pid

    pids = {_in_a_new_loop(one) for _ in range(5)}
    assert len(pids) == 1, pids  # one backend for five loops


def test_a_tcp_session_the_server_ended_is_not_handed_out(tcp_kwargs: dict[str, Any]) -> None:
    async def one() -> int:
        conn = await asyncpg_sessions.connect(asyncpg, tcp_kwargs)
        pid = int(conn.get_server_pid())
        assert await asyncpg_sessions.park(conn)
        return pid

    async def end(pid: int) -> None:
        admin = await asyncpg.connect(**tcp_kwargs)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            for _ in range(200):
                if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                    break
                await asyncio.sleep(0.01)
        finally:
            await admin.close()

    first = _in_a_new_loop(one)
    _in_a_new_loop(lambda: end(first))
    assert _in_a_new_loop(one) != first  # a new session, not the dead one
