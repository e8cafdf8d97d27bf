"""asyncpg, imported here and nowhere else in isolated_env (on first use, never at import).

- :func:`module` is the driver; a missing asyncpg is a :class:`MissingDependencyError`.
- :func:`translate` turns a driver failure on one of our own paths (connect, create or drop a
  database, build a template, reset, release) into our error, ``raise … from exc``. It never wraps
  a test's own queries: a test that expects ``asyncpg.UniqueViolationError`` gets it.
- :func:`begin` and :func:`rollback` run a test's outer transaction as asyncpg's own top-level
  transaction, so the test's ``transaction()`` nests as a savepoint. Inside the tested asyncpg
  range that takes one round trip each way through a private seam (:func:`_mark_top_transaction`);
  outside it, the public ``Transaction`` API (one more round trip each way, same meaning).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any, Protocol

from .._errors import IsolatedEnvError, MissingDependencyError, ServiceUnavailable, TeardownError, TemplateError
from .._redact import redact_url, scrubbed
from . import _seams

__all__ = ["SEAM_RANGE", "begin", "close", "connect", "module", "redacted_dsn", "rollback", "translate"]

log = logging.getLogger("isolated_env")

# asyncpg/transaction.py is the same from 0.28.0 through 0.32.0 (sources compared), and
# Connection._top_xact means the same there; tests/drivers/test_asyncpg_seam.py checks the
# installed release and fails once it leaves this range.
SEAM_RANGE = ">=0.28,<0.33"

_RUNNING = "check that the server is running and accepts connections (`isolated-env status` shows the embedded one)"


class Server(Protocol):
    """What the driver needs to know of a server (``_servers.postgres.PostgresServer`` has it)."""

    @property
    def password(self) -> str | None: ...

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]: ...

    def dsn(self, database: str | None = None) -> str: ...


def module() -> Any:
    """The asyncpg module, imported on first use."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a core dependency
        raise MissingDependencyError("asyncpg", "postgres", "isolated_postgres()") from None
    return asyncpg


def redacted_dsn(server: Server, database: str | None = None) -> str:
    """``server.dsn(database)`` with the password shown as ``***`` (for messages and reports)."""
    return redact_url(server.dsn(database))


def _fix_for(exc: BaseException, asyncpg: Any) -> str | None:
    """The fix for a failure that means the server cannot be used as configured, else None."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                        asyncpg.AdminShutdownError, asyncpg.CrashShutdownError)):
        return _RUNNING
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return "raise the server's max_connections, or lower ISOLATED_ENV_CAPACITY"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return "check the user and password in TEST_POSTGRES_URL (or TEST_POSTGRES_USER/TEST_POSTGRES_PASSWORD)"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return "connect as a role with that privilege (ALTER ROLE … CREATEDB for database mode)"
    return None


@contextlib.contextmanager
def translate(
    doing: str, where: str | Server, *, failure: type[TemplateError] | type[TeardownError] | None = None,
    database: str | None = None,
) -> Iterator[None]:
    """Raise our error, from the driver's, for a failure while ``doing`` something on ``where``.

    A refused, closed or overloaded connection, a login or privilege failure is
    :class:`ServiceUnavailable` with the fix; any other driver failure is ``failure`` (a template
    build's :class:`TemplateError`, a teardown's :class:`TeardownError`), or ServiceUnavailable
    when none is given. Our own errors and cancellation pass through unchanged. A server
    ``where`` (and its ``database``) is spelled out only on failure.
    """
    asyncpg = module()
    try:
        yield
    except IsolatedEnvError:
        raise
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncpg.InternalClientError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        place = where if isinstance(where, str) else redacted_dsn(where, database)  # only on failure: off the hot path
        problem = f"cannot {doing} {place}: {detail}"
        fix = _fix_for(exc, asyncpg)
        if fix is None and failure is not None:
            raise failure(problem) from exc
        scrubbed(exc)  # a connect's frames hold the password in their locals
        raise ServiceUnavailable("PostgreSQL", problem, fix=fix or "see the server's log for the cause") from exc


async def connect(server: Server, database: str | None = None, *, reuse: bool = False) -> Any:
    """An asyncpg connection to ``database`` (the server's own by default); with ``reuse``, on a
    session an earlier event loop parked (:mod:`.asyncpg_sessions`) when one is waiting."""
    with translate("connect to", server, database=database):
        if reuse:
            from . import asyncpg_sessions

            return await asyncpg_sessions.connect(module(), {**server.connect_kwargs(database), "timeout": 30})
        return await module().connect(**server.connect_kwargs(database), timeout=30)


_TERMINATE = b"X\x00\x00\x00\x04"


def detach(conn: Any) -> socket.socket | None:
    """Let go of ``conn`` in its loop without a word to the server: its session's socket (a copy of
    the descriptor) is returned, for :func:`end_session` elsewhere, or None when it has none.

    The Terminate message asyncpg's ``terminate()`` writes wakes the backend, which on a machine
    with few cores often runs its exit at once, on the writer's time (about 0.3 ms of each
    database-mode test on a 2-core machine, measured over 300-test runs). The background loop,
    which drops the database next, ends the session instead."""
    transport = getattr(conn, "_transport", None)  # asyncpg's, since 0.10
    raw = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or raw is None or conn.is_closed():
        conn.terminate()
        return None
    try:
        sock = socket.socket(fileno=os.dup(raw.fileno()))
    except OSError:
        conn.terminate()
        return None
    transport.write = lambda data: None  # asyncpg's Terminate: swallowed, the session lives in ``sock``
    conn.terminate()
    return sock


def end_session(sock: socket.socket) -> None:
    """End a session :func:`detach` let go of (Terminate, then close)."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(_TERMINATE)
    sock.close()


async def close(conn: Any, *, park: bool = False) -> None:
    """Close politely, or the hard way when the connection is already broken; with ``park``, a
    clean connection opened with ``reuse`` is parked for the next event loop instead."""
    if park:
        from . import asyncpg_sessions

        if await asyncpg_sessions.park(conn):
            return
    try:
        await conn.close(timeout=5)
    except Exception as exc:  # broken or unresponsive: terminate() frees it without a round trip
        log.debug("isolated_env: closing a PostgreSQL connection failed (%r); terminated it", exc)
        conn.terminate()


# ---------------------------------------------------------------------------------------------
# The outer transaction of a test, as asyncpg's own top-level transaction.


def _seam_tested() -> bool:
    return _seams.tested("asyncpg", SEAM_RANGE)


def _mark_top_transaction(conn: Any, tr: Any, *, started: bool) -> None:
    """The only place asyncpg's private transaction state is touched.

    ``started=True``: we sent BEGIN ourselves; make ``tr`` the connection's top transaction, as
    ``tr.start()`` would have, so a ``conn.transaction()`` inside it is a SAVEPOINT. ``started=False``:
    we are about to end it ourselves; forget it, as ``tr.rollback()`` would have.
    """
    from asyncpg.transaction import TransactionState

    if started:
        tr._state = TransactionState.STARTED
        conn._top_xact = tr
    else:
        if conn._top_xact is tr:
            conn._top_xact = None
        tr._state = TransactionState.ROLLEDBACK


async def begin(conn: Any, then: str) -> Any:
    """``BEGIN`` then ``then`` (a statement run inside the new transaction), as asyncpg's top
    transaction; returns it for :func:`rollback`."""
    tr = conn.transaction()
    if _seam_tested():
        await conn.execute(f"BEGIN; {then}")  # one round trip
        _mark_top_transaction(conn, tr, started=True)
    else:
        await tr.start()
        await conn.execute(then)
    return tr


async def rollback(conn: Any, tr: Any, *, check: str) -> bool:
    """End ``tr``: run ``check`` and ROLLBACK. True when ``check`` raised (``RAISE EXCEPTION``),
    i.e. the outer transaction was no longer ours; a failed statement of the test is not that."""
    asyncpg = module()
    if _seam_tested():
        if tr is not None:
            _mark_top_transaction(conn, tr, started=False)
        if not conn.is_in_transaction():
            return True  # COMMIT or ROLLBACK with nothing after it
        try:
            await conn.execute(f"{check}; ROLLBACK")  # one round trip
        except asyncpg.RaiseError:
            await conn.execute("ROLLBACK")
            return True
        except asyncpg.InFailedSQLTransactionError:
            await conn.execute("ROLLBACK")  # the test's statement failed; its transaction is ours to end
        return False
    escaped = not conn.is_in_transaction()
    if not escaped:
        try:
            await conn.execute(check)
        except asyncpg.RaiseError:
            escaped = True
        except asyncpg.InFailedSQLTransactionError:
            pass  # the test's statement failed: not an escape; the ROLLBACK below ends it
    if tr is not None:
        # Also when the test ended the transaction: this clears asyncpg's record of it (the server
        # only warns about a ROLLBACK outside a transaction).
        await tr.rollback()
    elif conn.is_in_transaction():
        await conn.execute("ROLLBACK")
    return escaped
