"""The names and SQL of the embedded PostgreSQL's guard rails (:mod:`isolated_env.resources.postgres.roles`
says what they are for), shared by the cluster cache and the resources.

The cached cluster is built with them: the test role (without a password) and the base database,
ready as a template. Each server start then gives the test role its password in the bootstrap
session that sets the superuser's, and leaves :data:`MARKER` in the server's directory, so the first
test on a new server makes no database of its own before its work database (the base's
``CREATE DATABASE`` cost every warm start ~25 ms, more on a busy machine). The resources still set
them up wherever the marker is missing (a server of an older build).
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["BASE", "BASE_SQL", "MARKER", "ROLE_OPTIONS", "TEST_ROLE", "build_statements", "role_password"]

TEST_ROLE = "ie_test"
BASE = "ie_base_1"  # bump the number when BASE_SQL changes
MARKER = f".rails-{BASE}"
"""In a server's directory: the rails are set up on that server."""

ROLE_OPTIONS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"

BASE_SQL = f"""
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


def role_password(superuser_password: str) -> str:
    """The test role's password, derived from the superuser's: every process of a run computes the
    same one, and none has to be stored."""
    return hmac.new(superuser_password.encode(), b"isolated_env test role", hashlib.sha256).hexdigest()


def build_statements(major: int) -> list[tuple[str, list[str]]]:
    """What the cluster cache runs once after initdb, as (database, statements) for single-user
    mode: the role and the base, the base's own SQL, then the base closed as a template (which a
    session cannot do to its own database)."""
    strategy = " STRATEGY FILE_COPY" if major >= 15 else ""
    return [
        ("template1", [f"CREATE ROLE {TEST_ROLE} {ROLE_OPTIONS}",
                       f"CREATE DATABASE {BASE} TEMPLATE template1{strategy}"]),
        (BASE, [BASE_SQL.strip().rstrip(";")]),
        ("template1", [f"ALTER DATABASE {BASE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"]),
    ]
