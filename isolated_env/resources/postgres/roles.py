"""Guard rails between tests: on the embedded server, tests connect as a role that cannot reach
another test's database, end another session, change the server, or write into a template.

- The **test role** ``ie_test`` is created once per server, by the server's superuser: it may log
  in, and nothing more (not superuser, not ``CREATEDB``/``CREATEROLE``, no replication, no RLS
  bypass). It owns no database, so ``DROP DATABASE`` and ``ALTER DATABASE`` are refused on every
  one; ``ALTER SYSTEM`` and server-wide settings are superuser-only. Its password (when the server
  has one) is derived from the superuser's, so every process of a run computes the same one and
  none has to be stored.
- The **base** ``ie_base_<format>`` is what every work database and template is made from instead
  of ``template1``: its ``public`` schema belongs to the test role (which then owns what the tests
  create) and ``pg_terminate_backend``/``pg_cancel_backend`` are revoked from ``PUBLIC``, so a
  test cannot end another test's session (functions are per database, so this reaches every copy).
- Databases handed to tests grant the test role ``CREATE`` (schemas, trusted extensions);
  templates are closed to connections once built (:mod:`.templates`).

On an external server none of this is done (its roles are the operator's): tests connect as the
URL's user; ``docs/postgres.md`` says how to set up the same rails there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
from typing import Any

import anyio

from ..._drivers import asyncpg as driver
from ..._servers.postgres import PostgresServer
from .labels import create_database, drop, server_key
from .sql import quote_ident, quote_literal

__all__ = ["BASE", "TEST_ROLE", "Rails", "ready", "role_password", "tests_server"]

TEST_ROLE = "ie_test"
BASE = "ie_base_1"  # bump the number when _BASE_SQL changes
_LOCK = (0x1E7E, 0x0BA5E)  # advisory lock of the one-time setup (first key shared with templates)

_BASE_SQL = f"""
ALTER SCHEMA public OWNER TO {TEST_ROLE};
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT oid::regprocedure FROM pg_proc
             WHERE pronamespace = 'pg_catalog'::regnamespace
               AND proname IN ('pg_terminate_backend', 'pg_cancel_backend')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
"""


@dataclasses.dataclass(frozen=True)
class Rails:
    """How one server is used: ``tests`` is whom tests connect as, ``base`` what databases start
    from, ``role`` the role to grant ``CREATE`` on a database handed to tests (None: nothing)."""

    tests: PostgresServer
    base: str
    role: str | None


_lock = threading.Lock()
_ready: dict[str, Rails] = {}


def role_password(server: PostgresServer) -> str | None:
    """The test role's password: derived from the superuser's (None when the server has none)."""
    if not server.password:
        return None
    return hmac.new(server.password.encode(), b"isolated_env test role", hashlib.sha256).hexdigest()


async def ready(admin: Any, name: str) -> bool:
    """Whether ``name`` is a finished template: marked, closed to connections, and valid."""
    row = await admin.fetchrow(
        "SELECT datistemplate AND NOT datallowconn AND datconnlimit <> -2 AS ready FROM pg_database "
        "WHERE datname = $1", name
    )
    return bool(row and row["ready"])


async def rails(server: PostgresServer) -> Rails:
    """The guard rails of ``server``, set up on first use (once per server, whoever comes first)."""
    key = f"{server.source}:{server_key(server)}"  # the embedded server named by a URL is external
    with _lock:
        known = _ready.get(key)
    if known is not None:
        return known
    if server.source != "embedded":
        made = Rails(server, "template1", None)
    else:
        with driver.translate("set up the test role on", driver.redacted_dsn(server)):
            await _set_up(server)
        tests = dataclasses.replace(server, user=TEST_ROLE, password=role_password(server))
        made = Rails(tests, BASE, TEST_ROLE)
    with _lock:
        _ready[key] = made
    return made


async def tests_server(server: PostgresServer, *, superuser: bool = False) -> PostgresServer:
    """``server`` as the tests connect to it: as the test role, or its superuser when asked."""
    return server if superuser else (await rails(server)).tests


async def _set_up(server: PostgresServer) -> None:
    admin = await driver.connect(server)
    try:
        if await _role_exists(admin) and await ready(admin, BASE):
            return
        await admin.execute("SELECT pg_advisory_lock($1, $2)", *_LOCK)
        try:
            await _make_role(admin, server)
            if not await ready(admin, BASE):
                await _make_base(admin, server)
        finally:
            with anyio.CancelScope(shield=True):
                if admin.is_in_transaction():
                    await admin.execute("ROLLBACK")
                await admin.execute("SELECT pg_advisory_unlock($1, $2)", *_LOCK)
    finally:
        with anyio.CancelScope(shield=True):
            await driver.close(admin)


async def _role_exists(admin: Any) -> bool:
    return bool(await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", TEST_ROLE))


async def _make_role(admin: Any, server: PostgresServer) -> None:
    password = role_password(server)
    secret = f" PASSWORD {quote_literal(password)}" if password else ""
    verb = "ALTER" if await _role_exists(admin) else "CREATE"
    await admin.execute(
        f"{verb} ROLE {quote_ident(TEST_ROLE)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        f"NOBYPASSRLS{secret}"
    )


async def _make_base(admin: Any, server: PostgresServer) -> None:
    await drop(admin, BASE)  # a base left half-made by a setup that was interrupted
    try:
        await create_database(admin, server, BASE, "template1", building="base")
        conn = await driver.connect(server, BASE)
        try:
            await conn.execute(_BASE_SQL)
        finally:
            with anyio.CancelScope(shield=True):
                await driver.close(conn)
        await admin.execute(f"ALTER DATABASE {quote_ident(BASE)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await drop(admin, BASE)
        raise
