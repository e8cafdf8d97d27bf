"""The handles a test gets: asyncpg's own query API on its connection, and ``.dsn`` to reach the
same database from any other client."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..._drivers import asyncpg as driver
from ..._errors import TeardownError
from ..._servers.postgres import PostgresServer
from ._connection_api import ConnectionMethods
from .labels import create_database, drop_database

__all__ = ["Clone", "DatabaseHandle", "PostgresHandle"]


class PostgresHandle(ConnectionMethods):
    """asyncpg's query API on a test's isolated connection; ``.dsn`` reaches the same database.

    Every asyncpg ``Connection`` method works on the handle (``execute``, ``fetch``, ``fetchrow``,
    ``fetchval``, ``executemany``, ``transaction``, ``copy_*``, ``prepare``, ``cursor`` …), and type
    checkers see them. ``.host`` and ``.port`` are for code that dials TCP: None when the server is
    on a unix socket only (the embedded one, unless ``ISOLATED_ENV_POSTGRES_TCP=1``); ``.user`` and
    ``.password`` go with them (the embedded server's password is generated per server). ``repr()``
    shows no password.
    """

    def __init__(self, connection: Any, server: PostgresServer, database: str, mode: str, pool: Any) -> None:
        self.connection: Any = connection  # an asyncpg.Connection
        self.server = server
        self.database = database
        self.mode = mode
        self.dsn = server.dsn(database)
        address = server.address
        self.host: str | None = address[0] if address else None
        self.port: int | None = address[1] if address else None
        self.user: str = server.user
        self.password: str | None = server.password  # with host and port: ``.dsn`` carries it too
        self._pool = pool

    if not TYPE_CHECKING:  # hidden from type checkers, or a typo would type-check as Any

        def __getattr__(self, name: str) -> Any:
            return getattr(self.connection, name)

    def __repr__(self) -> str:
        return f"<PostgresHandle mode={self.mode} dsn={driver.redacted_dsn(self.server, self.database)}>"


@dataclasses.dataclass
class Clone:
    """A private database made from a template, with a connection already open to it; ``login``
    is whom tests log in to it as, when the warm pool worked it out ahead of the lease."""

    name: str
    conn: Any
    kept: bool = False
    login: PostgresServer | None = None


class DatabaseHandle(PostgresHandle):
    """A private database: asyncpg's query API on one connection, ``.dsn`` for any other client.

    Commits are allowed and any number of connections may be opened to ``.dsn``; on release the
    database is dropped (their sessions are ended), unless it is kept for a failed test.
    """

    def __init__(
        self, clone: Clone, server: PostgresServer, pool: Any, template: str, keep_on_failure: bool, *,
        admin: PostgresServer | None = None, grant: str | None = None, closing: str | Callable[[], str] = "",
    ) -> None:
        super().__init__(clone.conn, server, clone.name, "database", pool)
        self._admin = admin or server  # creates, relabels and drops the database
        self._grant = grant
        # The SQL that closes it to other roles (and makes its own), or what writes it when a reset
        # needs it (a role's SCRAM verifier took each lease ~0.13 ms to compute; few tests reset).
        self._closing = closing
        self.template = template
        self.keep_on_failure = keep_on_failure
        self.kept = False
        self.failed = False
        self._ie_clone = clone

    async def _reset(self) -> None:
        """Back to a fresh copy of the template under the same name, so ``.dsn`` stays valid."""
        self.connection.terminate()
        with driver.translate(f"reset {self.database} (a fresh copy of {self.template}) on",
                              driver.redacted_dsn(self.server), failure=TeardownError):
            admin = await driver.connect(self._admin)
            try:
                await drop_database(admin, self.database)
                await create_database(admin, self._admin, self.database, self.template, grant=self._grant,
                                      then=self._closing() if callable(self._closing) else self._closing,
                                      mode="database", origin=self.template)
            finally:
                await driver.close(admin)
            self.connection = self._ie_clone.conn = await driver.connect(self.server, self.database)
