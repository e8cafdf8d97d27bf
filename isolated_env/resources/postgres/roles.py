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
- Each **private database** (database mode) has a login role of its own, named as the database
  (:func:`lease_server`): the only role with ``CONNECT`` on it (revoked from ``PUBLIC``), a
  ``NOINHERIT`` member of the test role that becomes the test role on login (``SET role``), so
  tests work as before, own what they create, and one test cannot connect to another test's
  database even when it guesses the name. It is made in the clone's labelling round trip and
  dropped with the database; its password is derived from the test role's, and stored as a
  64-round SCRAM verifier (the password is random, so rounds would only slow every login).

On an external server none of this is done (its roles are the operator's): tests connect as the
URL's user; ``docs/postgres.md`` says how to set up the same rails there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import threading
from pathlib import Path
from typing import Any

import anyio

from ..._drivers import asyncpg as driver
from ..._servers import _pg_rails
from ..._servers._pg_cluster import scram_verifier
from ..._servers.postgres import PostgresServer
from .labels import create_database, drop, server_key
from .sql import quote_ident, quote_literal

__all__ = ["BASE", "TEST_ROLE", "Rails", "lease_server", "lease_sql", "ready", "role_password", "tests_server"]

TEST_ROLE = _pg_rails.TEST_ROLE
BASE = _pg_rails.BASE  # its number is bumped when _BASE_SQL changes
_LOCK = (0x1E7E, 0x0BA5E)  # advisory lock of the one-time setup (first key shared with templates)

_BASE_SQL = _pg_rails.BASE_SQL


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
    return _pg_rails.role_password(server.password) if server.password else None


def lease_server(tests: PostgresServer, database: str) -> PostgresServer | None:
    """Whom a test logs in to its private ``database`` as: the database's own role, when ``tests``
    is the test role (None otherwise: a superuser test, an external server's user)."""
    if tests.user != TEST_ROLE or tests.source != "embedded":
        return None
    password = None
    if tests.password:
        password = hmac.new(tests.password.encode(), b"isolated_env lease " + database.encode(),
                            hashlib.sha256).hexdigest()
    return dataclasses.replace(tests, user=database, password=password)


def lease_sql(database: str, lease: PostgresServer | None) -> str:
    """What closes ``database`` to every role but its own (``lease``), for the labelling round trip."""
    db = quote_ident(database)
    sql = f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC"
    if lease is None:
        return sql
    role = quote_ident(lease.user)
    secret = f" PASSWORD {quote_literal(scram_verifier(lease.password))}" if lease.password else ""
    return (
        f"CREATE ROLE {role} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE IN ROLE {TEST_ROLE}{secret}; "
        f"ALTER ROLE {role} SET role = {TEST_ROLE}; {sql}; GRANT CONNECT ON DATABASE {db} TO {role}"
    )


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
        # The embedded server's directory says when some process already set them up on it (they
        # last as long as the server, whose directory goes with it): no round trip at all then.
        done = Path(server.host) / _pg_rails.MARKER  # made by the server's start (the cluster has them)
        if not done.exists():
            with driver.translate("set up the test role on", driver.redacted_dsn(server)):
                await _set_up(server)
            with contextlib.suppress(OSError):  # without it, the next process only checks again
                done.touch()
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
    # As a verifier of few rounds, as the superuser's: the password is random, so the default 4096
    # rounds would only cost every login of the test role its PBKDF2, on both sides.
    secret = f" PASSWORD {quote_literal(scram_verifier(password))}" if password else ""
    verb = "ALTER" if await _role_exists(admin) else "CREATE"
    await admin.execute(
        f"{verb} ROLE {quote_ident(TEST_ROLE)} {_pg_rails.ROLE_OPTIONS}{secret}"
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
