"""No password reaches output: a canary password in TEST_POSTGRES_URL, TEST_REDIS_URL and
TEST_CLICKHOUSE_URL appears 0 times in the whole output of a failing pytest run that prints the
handles and the environment (``-vv``, ``--showlocals``, long tracebacks, DEBUG logs), whether the
servers are reachable and take it, reachable and refuse it, or not there at all.

The external servers are real: this module's own embedded PostgreSQL and Redis, over TCP, with a
role and an ACL user whose password is the canary; ClickHouse is the embedded adaptor, which
refuses the canary.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest
import redis.asyncio as aredis
from _helpers import Servers, servers_on_tcp

import isolated_env as ie
from isolated_env._config import ExternalEndpoint

CANARY = "cAnArY" + uuid.uuid4().hex[:12]  # letters and digits: the same URL-encoded or not

USER_TESTS = textwrap.dedent(
    """
    import logging
    import isolated_env as ie

    async def test_postgres_handle_in_assertion(isolated_env):
        db = await isolated_env.enter(ie.isolated_postgres())
        server = db.server
        assert (db, isolated_env, server, str(db), db.server) is None

    async def test_redis_handle_in_assertion(isolated_env):
        r = await isolated_env.enter(ie.isolated_redis())
        server = r.server
        assert (r, isolated_env, server, str(r)) is None

    async def test_clickhouse_handle_in_assertion(isolated_env):
        ch = await isolated_env.enter(ie.isolated_clickhouse())
        assert (ch, isolated_env, ch.server) is None

    async def test_database_mode(isolated_env):
        db = await isolated_env.enter(ie.isolated_postgres(mode="database"))
        logging.getLogger("isolated_env").warning("handle %r env %r", db, isolated_env)
        assert db is None
    """
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """This module's own embedded servers on TCP, with a login whose password is the canary."""
    with servers_on_tcp("ie-sec-") as found:
        anyio.run(_canary_logins, found)
        yield found


async def _canary_logins(found: Servers) -> None:
    conn = await asyncpg.connect(**found.pg.connect_kwargs())
    await conn.execute(f"CREATE ROLE ie_canary LOGIN SUPERUSER PASSWORD '{CANARY}'")
    await conn.close()
    admin = aredis.Redis(**found.rs.client_kwargs(0))
    await admin.execute_command("ACL", "SETUSER", "canary", "on", f">{CANARY}", "~*", "&*", "+@all")
    await admin.aclose()


# Other plugins installed here that the run does not need (hypothesis's alone imports for 3 s);
# isolated_env's own plugin loads through its entry point, as for a user.
_UNUSED_PLUGINS = [arg for name in ("hypothesispytest", "pytest_postgresql", "pytest_redis", "django", "valkey",
                                    "xdist", "xdist.looponfail") for arg in ("-p", f"no:{name}")]


def _run(pytester: pytest.Pytester, **urls: str) -> str:
    """A failing pytest run in a child with ``urls`` as its TEST_*_URL: its whole output."""
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini("[pytest]\nanyio_mode = auto\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE"))}
    env.update(urls, CI="true", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-vv", "--showlocals", "--tb=long",
         "-o", "log_cli=true", "--log-cli-level=DEBUG", "-W", "ignore", *_UNUSED_PLUGINS, str(pytester.path)],
        capture_output=True, text=True, env=env, cwd=pytester.path, timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # the tests failed (none was skipped for want of a server)
    return out


def _canary_urls(pg_user: str, redis_user: str, pg_port: int, redis_port: int, ch_port: int) -> dict[str, str]:
    """The three TEST_*_URL, each with the canary as its password."""
    return {
        "TEST_POSTGRES_URL": f"postgresql://{pg_user}:{CANARY}@127.0.0.1:{pg_port}/postgres",
        "TEST_REDIS_URL": f"redis://{redis_user}:{CANARY}@127.0.0.1:{redis_port}/0",
        "TEST_CLICKHOUSE_URL": f"http://default:{CANARY}@127.0.0.1:{ch_port}",
    }


def test_a_canary_password_taken_by_every_server_is_never_printed(servers: Servers, pytester: pytest.Pytester) -> None:
    out = _run(pytester, **_canary_urls("ie_canary", "canary", servers.pg.tcp_port, servers.rs.port, servers.ch.port))
    # the handles and the environment were printed (PostgreSQL and Redis took the canary) ...
    assert "<PostgresHandle mode=transaction dsn=postgresql://ie_canary:***@127.0.0.1" in out
    assert "<RedisHandle db=" in out and "redis://canary:***@127.0.0.1" in out
    assert "TEST_CLICKHOUSE_URL=http://default:***@127.0.0.1" in out  # ... the adaptor refused it
    assert out.count(CANARY) == 0


def test_a_canary_password_refused_or_unreachable_is_never_printed(servers: Servers, pytester: pytest.Pytester) -> None:
    wrong = _run(pytester, **_canary_urls("postgres", "default", servers.pg.tcp_port, servers.rs.port, servers.ch.port))
    assert "password authentication failed" in wrong and "TEST_POSTGRES_URL=postgresql://postgres:***@" in wrong
    assert "TEST_REDIS_URL=redis://default:***@" in wrong
    assert wrong.count(CANARY) == 0
    port = _closed_port()
    gone = _run(pytester, **_canary_urls("postgres", "default", port, port, port))
    assert "cannot connect using TEST_POSTGRES_URL=postgresql://postgres:***@127.0.0.1" in gone
    assert gone.count(CANARY) == 0


async def test_reprs_show_no_password(servers: Servers) -> None:
    endpoint = ExternalEndpoint("postgresql", "db.example", 5432, "app", CANARY, "app", "TEST_POSTGRES_URL")
    for obj in (servers.pg, servers.rs, servers.ch, endpoint):
        assert servers.pg.password not in repr(obj) and CANARY not in repr(obj) and CANARY not in str(obj)
    async with ie.Environment() as env:
        db = await env.enter(ie.isolated_postgres())
        r = await env.enter(ie.isolated_redis())
        for obj in (db, r, db.server, r.server, env):
            for secret in (db.server.password, r.server.password):
                assert secret and secret not in repr(obj) and secret not in str(obj)
        # what code connects with carries the password of the login it names (Redis: the
        # database's restricted user when the server has guard rails), and no repr shows it
        assert db.server.password in db.dsn
        test_password = urlsplit(r.url).password
        assert test_password and test_password not in repr(r) and test_password not in repr(env)
