"""A synchronous way in: the isolated resources for code that has no event loop.

    from isolated_env import sync

    with sync.isolated_postgres(template=schema) as db:     # a private database (database mode)
        with db.connect() as conn:                           # a psycopg connection
            conn.execute("INSERT INTO users VALUES (1)")
    with sync.Environment() as env:
        r = env.enter(sync.isolated_redis())                 # r.set("k", "v"): a redis.Redis

The async resources run on one background event loop per process (anyio's blocking portal,
started on first use and closed at exit); each sync context manager enters and leaves its resource
in one task of that loop, and hands out what synchronous code can use: DSNs, URLs and sync
clients. PostgreSQL is database mode only: a transaction-mode connection belongs to the loop that
opened it and cannot be shared with the caller's thread.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from .._errors import ConfigError
from ._context import Environment, SyncContext
from ._handles import ClickHouse, Fs, Http, Postgres, Redis
from ._portal import call, close, portal

__all__ = [
    "ClickHouse", "Environment", "Fs", "Http", "Postgres", "Redis", "SyncContext", "call", "close",
    "isolated_clickhouse", "isolated_fs", "isolated_http", "isolated_postgres", "isolated_redis", "portal",
]


def isolated_postgres(
    *, mode: str = "database", template: Any = None, keep_on_failure: bool | None = None, superuser: bool = False
) -> SyncContext[Postgres]:
    """A private PostgreSQL database cloned from ``template`` (a :class:`~isolated_env.PostgresTemplate`),
    dropped on exit (kept for a failed test with ``keep_on_failure``). Database mode only;
    ``superuser`` as for :func:`isolated_env.isolated_postgres`."""
    if mode != "database":
        raise ConfigError(
            f"sync.isolated_postgres(mode={mode!r}): synchronous code gets database mode only. A transaction-mode "
            "connection belongs to the event loop that opened it and cannot be shared with another thread; use "
            "mode='database' (a private database, reachable by .dsn from any driver), or the async "
            "isolated_postgres() for transaction mode"
        )
    from ..resources.postgres import isolated_postgres as make

    return SyncContext(
        "postgres",
        lambda: make(mode="database", template=template, keep_on_failure=keep_on_failure, superuser=superuser),
        Postgres,
    )


def isolated_redis(*, keep_on_failure: bool | None = None) -> SyncContext[Redis]:
    """A private Redis database (flushed on exit) and a ``redis.Redis`` client for it."""
    from ..resources.redis import isolated_redis as make

    return SyncContext("redis", lambda: make(keep_on_failure=keep_on_failure), Redis)


def isolated_clickhouse(
    *, mode: Literal["database", "prefix"] = "database", keep_on_failure: bool | None = None
) -> SyncContext[ClickHouse]:
    """A private ClickHouse database (dropped on exit) and clickhouse-connect's sync client for it
    (``mode="prefix"``: a private table prefix, ``handle.table("events")``)."""
    from ..resources.clickhouse import isolated_clickhouse as make

    return SyncContext("clickhouse", lambda: make(mode=mode, keep_on_failure=keep_on_failure), ClickHouse)


def isolated_http() -> SyncContext[Http]:
    """An HTTP server answering by expectations, and an ``httpx.Client`` for it."""
    from ..resources.http import isolated_http as make

    return SyncContext("http", make, Http)


def isolated_fs(base: str | os.PathLike[str] | None = None, *, keep_on_failure: bool | None = None) -> SyncContext[Fs]:
    """A private directory (under ``base``, default the state directory), removed on exit."""
    from ..resources.fs import isolated_fs as make

    return SyncContext("fs", lambda: make(base, keep_on_failure=keep_on_failure), Fs)
