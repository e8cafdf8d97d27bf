"""Least privilege on shared servers (issue 9, item 3): ``doctor``'s checks of what the login of
TEST_*_URL may do, against the embedded PostgreSQL and Redis with restricted roles and ACL users
created here; the PostgreSQL finding is also held to its word (transaction mode works without
CREATEDB, database mode does not)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

import isolated_env as ie
from isolated_env import _grants as grants
from isolated_env._config import resolve
from isolated_env._drivers import asyncpg as driver
from isolated_env._drivers import redis as redis_driver
from isolated_env._servers import postgres as pg_servers
from isolated_env._servers import redis as redis_servers

NO_CREATEDB = "this role lacks CREATEDB: database mode unavailable; transaction mode works"


@pytest.fixture
async def pg_role(
    clean_environ: pytest.MonkeyPatch, shared_servers: dict[str, str]
) -> AsyncIterator[tuple[Any, Any, str, str]]:
    """A login role with CREATEDB (not superuser) on a server of this module's own, and an admin
    connection as its superuser."""
    clean_environ.setenv("TEST_POSTGRES_URL", shared_servers["TEST_POSTGRES_URL"])
    embedded = await pg_servers.ensure_server(resolve())
    admin = await driver.connect(embedded)
    role, password = f"ie_grants_{os.urandom(3).hex()}", secrets.token_urlsafe(16)
    await admin.execute(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'")
    try:
        yield embedded, admin, role, password
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {role}_app WITH (FORCE)")
        rows = await admin.fetch("SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles "
                                 "WHERE rolname = $1)", role)
        for row in rows:
            await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await driver.close(admin)


async def test_postgres_grants(pg_role: tuple[Any, Any, str, str], clean_environ: pytest.MonkeyPatch) -> None:
    embedded, admin, role, password = pg_role
    assert (await grants.postgres(embedded))[0][0] == "warning"  # the server's superuser
    server = dataclasses.replace(embedded, user=role, password=password, source="external")
    [(level, text)] = await grants.postgres(server)
    assert level == "ok" and "has CREATEDB and is not superuser" in text

    await admin.execute(f"ALTER ROLE {role} NOCREATEDB")
    [(level, text)] = await grants.postgres(server)
    assert level == "missing" and NO_CREATEDB in text and f"ALTER ROLE {role} CREATEDB" in text
    # What the finding says holds: transaction mode works (in the database the URL names) ...
    await admin.execute(f"CREATE DATABASE {role}_app OWNER {role}")
    clean_environ.setenv("TEST_POSTGRES_URL", server.dsn(f"{role}_app"))
    async with ie.isolated_postgres() as db:
        await db.execute("CREATE TABLE t (x int)")
        await db.execute("INSERT INTO t VALUES (1)")
        assert await db.fetchval("SELECT count(*) FROM t") == 1
    async with ie.isolated_postgres() as db:
        assert await db.fetchval("SELECT to_regclass('t')") is None
    # ... and database mode does not.
    with pytest.raises(ie.ServiceUnavailable, match="may not create databases"):
        async with ie.isolated_postgres(mode="database"):
            pass


@pytest.fixture
async def redis_admin() -> AsyncIterator[tuple[Any, Any, list[str]]]:
    server = await redis_servers.ensure_server(resolve())
    client = redis_driver.asyncio_client(**server.client_kwargs(0))
    made: list[str] = []
    try:
        yield server, client, made
    finally:
        for user in made:
            await client.execute_command("ACL", "DELUSER", user)
        await client.aclose()


async def _redis_user(admin: Any, server: Any, made: list[str], *rules: str) -> Any:
    user, password = f"ie_grants_{os.urandom(3).hex()}", secrets.token_urlsafe(16)
    await admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", *rules)
    made.append(user)
    return dataclasses.replace(server, username=user, password=password, source="external")


async def test_redis_grants(redis_admin: tuple[Any, Any, list[str]]) -> None:
    server, admin, made = redis_admin
    least = await _redis_user(admin, server, made, "allcommands", "-flushall", "-config", "-swapdb", "-debug")
    [(level, text)] = await grants.redis(least)
    assert level == "ok" and "FLUSHALL, CONFIG, SWAPDB and DEBUG denied" in text

    wide = await _redis_user(admin, server, made, "allcommands")
    [(level, text)] = await grants.redis(wide)
    assert level == "warning" and "may run FLUSHALL, CONFIG, SWAPDB, DEBUG" in text and "-flushall" in text

    too_narrow = await _redis_user(admin, server, made, "allcommands", "-flushdb", "-flushall", "-config",
                                   "-swapdb", "-debug")
    [(level, text)] = await grants.redis(too_narrow)
    assert level == "missing" and "may not run FLUSHDB" in text

    blind = await _redis_user(admin, server, made, "allcommands", "-acl", "-flushall")
    [(level, text)] = await grants.redis(blind)
    assert level == "warning" and "rights are unknown" in text


def test_doctor_prints_the_grants_of_an_external_server(shared_servers: dict[str, str]) -> None:
    # The server's superuser, named by TEST_POSTGRES_URL: doctor says it is more than needed.
    env = {**os.environ, "TEST_POSTGRES_URL": shared_servers["TEST_POSTGRES_URL"]}
    out = subprocess.run([sys.executable, "-m", "isolated_env.cli", "doctor", "postgres"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert "grants     warning: role postgres is a superuser" in out.stdout, out.stdout + out.stderr
