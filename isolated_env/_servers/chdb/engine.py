"""The chdb side of the adaptor: one engine per process, a connection per request or session.

What chdb told us (measured, chdb 4.4 on chdb-core 26.9): any number of connections may be open
on the one engine path of a process, each with its own current database and settings; opening
one costs ~0.1 ms (settings can ride in its connection string); queries on different connections
run in parallel and release the GIL; the engine stops when its last connection closes, so a
keeper connection stays open for the adaptor's life; ``send_insert`` feeds raw ``FORMAT`` bytes
(Native included). So a request without a session runs in a worker thread on a connection opened
with its settings and database (an idle one with the same connection string when there is one,
see :mod:`.conns`), and a session is a connection kept between requests.

Everything goes through chdb's public API (``chdb.connect``, ``Connection.query`` and
``send_insert``, the result's statistics) except counting the statements of a query, which only
the extension's ``classify_query`` does with the engine's own parser: that one seam is
:func:`statement_count`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from isolated_env._drivers import _seams

from . import native
from .config import write_config
from .conns import CONNECTION_SAFE, Idle, Use, connection_string, reusable
from .guard import ADMIN, check
from .protocol import (
    EngineError,
    Outcome,
    Query,
    count_statements,
    first_word,
    may_hold_several_statements,
    quote_ident,
    quote_literal,
    result_format,
)
from .reply import result_summary, summary
from .stream import concatenable, open_stream, streams

__all__ = ["CHDB_TESTED", "CHDB_CORE_TESTED", "Engine", "connection_string", "statement_count"]

_log = logging.getLogger("isolated_env")

CHDB_TESTED = ">=4.4.0,<4.5"
"""chdb (the Python wrapper holding ``Connection._conn``) versions :func:`statement_count` was tested on."""
CHDB_CORE_TESTED = ">=26.9.0,<26.10"
"""chdb-core (the extension whose connection has ``classify_query``) versions it was tested on."""



def statement_count(conn: Any, sql: str) -> int:
    """How many statements ``sql`` holds, as the engine's parser counts them (0: it does not parse).

    The seam: chdb's public ``Connection`` keeps the extension's connection in ``_conn``, and only
    that object has ``classify_query``. Outside the tested versions the count comes from
    :func:`.protocol.count_statements`, a tokenizer that knows quotes and comments.
    """
    if _seams.tested("chdb", CHDB_TESTED) and _seams.tested("chdb-core", CHDB_CORE_TESTED):
        report = conn._conn.classify_query(sql.encode("utf-8", "surrogateescape"), "")
        return int(report["statement_count"])
    return count_statements(sql)


def _close(conn: Any, what: str) -> None:
    try:
        conn.close()
    except Exception:  # the connection is being let go: a failure to close it changes nothing else
        _log.debug("chdb adaptor: closing %s failed", what, exc_info=True)


class _Session:
    __slots__ = ("applied", "baseline", "conn", "database", "expires", "lock", "own_database", "timeout")

    def __init__(self, conn: Any, timeout: float) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.timeout = timeout
        self.expires = time.monotonic() + timeout
        self.applied: dict[str, str] = {}  # request settings in force on the connection
        self.baseline: dict[str, str | None] = {}  # the session's own values under them (None: default)
        self.database = "default"  # in force on the connection
        self.own_database = "default"  # the session's own (its USE statements); a request's database= is not


class Engine:
    """The chdb engine of this process: fresh connections per request, kept ones per session."""

    def __init__(self, path: Path) -> None:
        import chdb

        self._chdb_connect: Callable[[str], Any] = chdb.connect
        self.path = str(path)
        path.mkdir(parents=True, exist_ok=True)
        # Keeps the engine up: chdb stops it when the last connection closes. The engine starts with
        # the configuration of ``write_config`` (chdb's default has no system.query_log).
        self._keeper = self._open(f"{self.path}?config-file={write_config(path)}")
        info = self._keeper.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = info[0], info[1].strip()
        names = self._keeper.query("SELECT name FROM system.settings", "TabSeparated").bytes().decode()
        self.settings_names = frozenset(names.split())
        # Keyed by user too: a lease user cannot take over a session of another user.
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._sessions_lock = threading.Lock()
        self._known: tuple[float, frozenset[str]] = (0.0, frozenset())
        self._idle = Idle(lambda conn: _close(conn, "an idle connection"))

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            with session.lock:
                _close(session.conn, "a session's connection")
        self._idle.clear()
        _close(self._keeper, "the keeper connection")

    def check_settings(self, settings: Mapping[str, str]) -> None:
        for name in settings:
            if name not in self.settings_names:
                raise EngineError.of(115, "UNKNOWN_SETTING", f"Unknown setting '{name}'")

    def execute(self, query: Query) -> Outcome:
        """Run one request (blocking: called in a worker thread). A streamed result holds its
        connection (or its session's lock) until its ``rest`` ends or is closed."""
        self.check_settings(query.settings)
        if query.user != ADMIN:
            query = dataclasses.replace(query, sql=check(query.user, query.database, query.sql, self.databases))
        cleanup = contextlib.ExitStack()
        use: Use | None = None
        try:
            if query.session_id is None:
                use = self._connect(query.settings, query.database)
                if query.external or not reusable(query.sql):
                    use.target = None
                cleanup.callback(self._let_go, use)
                outcome = self._run(use, query, cleanup)
            else:
                session = self._session(query)
                if not session.lock.acquire(blocking=False):
                    raise EngineError.of(
                        373, "SESSION_IS_LOCKED", f"Session {query.session_id} is locked by a concurrent client"
                    )
                cleanup.callback(self._release, session)
                self._apply_session_state(session, query)
                outcome = self._run(Use(session.conn, None), query, cleanup)
                if first_word(query.sql) == b"USE":  # the session's own database changes, as a server's would
                    session.own_database = session.database = self._current_database(session.conn)
        except BaseException:
            if use is not None:
                use.ok = False
            cleanup.close()
            raise
        if outcome.rest is None:
            cleanup.close()
        return outcome

    def _let_go(self, use: Use) -> None:
        if use.target is not None and use.ok and (use.chunks is None or use.chunks.finished):
            self._idle.give(use.target, use.conn)
        else:
            _close(use.conn, "a request's connection")

    @staticmethod
    def _release(session: _Session) -> None:
        session.expires = time.monotonic() + session.timeout
        session.lock.release()

    @staticmethod
    def _current_database(conn: Any) -> str:
        try:
            return str(conn.query("SELECT currentDatabase()", "TabSeparated").bytes().decode().strip())
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None

    def databases(self) -> frozenset[str]:
        """The names of the engine's databases (for the guard rails; cached for a second)."""
        at, names = self._known
        if time.monotonic() - at > 1.0:
            conn = self._open(self.path)
            try:
                text = conn.query("SELECT name FROM system.databases", "TabSeparated").bytes().decode()
            finally:
                _close(conn, "a connection listing databases")
            names = frozenset(text.split())
            self._known = (time.monotonic(), names)
        return names

    def _open(self, target: str) -> Any:
        try:
            return self._chdb_connect(target)
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None

    def _connect(self, settings: Mapping[str, str], database: str | None) -> Use:
        """A connection for ``settings`` and ``database``: an idle one, or opened now (one that
        needed a ``USE`` or ``SET`` after opening is not kept: its target does not describe it)."""
        target, late = connection_string(self.path, settings, database)
        keyed = not late and not (database and not CONNECTION_SAFE.match(database))
        idle = self._idle.take(target) if keyed else None
        if idle is not None:
            return Use(idle, target)
        conn = self._open(target)
        try:
            if database and not CONNECTION_SAFE.match(database):
                conn.query(f"USE {quote_ident(database)}", "TabSeparated")
            if late:
                conn.query("SET " + ", ".join(f"{k} = {quote_literal(v)}" for k, v in late.items()), "TabSeparated")
        except RuntimeError as exc:
            _close(conn, "a connection that failed to set up")
            raise EngineError.from_engine(exc) from None
        return Use(conn, target if keyed else None)

    def _session(self, query: Query) -> _Session:
        assert query.session_id is not None
        now = time.monotonic()
        expired: list[_Session] = []
        with self._sessions_lock:
            for key, session in list(self._sessions.items()):
                if session.expires < now and not session.lock.locked():
                    expired.append(self._sessions.pop(key))
            found = self._sessions.get((query.user, query.session_id))
            if found is None:
                if query.session_check:
                    raise EngineError.of(372, "SESSION_NOT_FOUND", f"Session {query.session_id} not found")
                session = _Session(self._open(self.path), query.session_timeout)
                self._sessions[(query.user, query.session_id)] = session
            else:
                # Refreshed under the lock, so a concurrent sweep cannot close it before it is used.
                session = found
                session.timeout = query.session_timeout
                session.expires = now + session.timeout
        for old in expired:
            _close(old.conn, "an expired session's connection")
        return session

    def _apply_session_state(self, session: _Session, query: Query) -> None:
        # Request settings apply to that request only. The session's own value of a setting is
        # read before a request first overrides it and put back when a request no longer does;
        # nothing is run when the client sends the same settings every time (clickhouse-connect).
        conn = session.conn
        try:
            wanted = query.database or session.own_database
            if wanted != session.database:
                conn.query(f"USE {quote_ident(wanted)}", "TabSeparated")
                session.database = wanted
            fresh = [k for k in query.settings if k not in session.applied]
            if fresh:
                names = ", ".join(quote_literal(k) for k in fresh)
                rows = conn.query(
                    f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})", "JSONEachRow"
                ).bytes()
                for line in rows.splitlines():
                    row = json.loads(line)
                    session.baseline[row["name"]] = row["value"] if row["changed"] else None
            changes = []
            for k in session.applied:
                if k not in query.settings:
                    own = session.baseline.get(k)
                    changes.append(f"{k} = " + ("DEFAULT" if own is None else quote_literal(own)))
            for k, v in query.settings.items():
                if session.applied.get(k) != v:
                    changes.append(f"{k} = {quote_literal(v)}")
            if changes:
                conn.query("SET " + ", ".join(changes), "TabSeparated")
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None
        for k in session.applied:
            if k not in query.settings:
                session.baseline.pop(k, None)
        session.applied = dict(query.settings)

    @staticmethod
    def _insert(conn: Any, head: str, fmt: str, data: bytes) -> dict[str, str]:
        inserter = conn.send_insert(head, fmt)
        try:
            inserter.append(data)
        except BaseException:
            try:
                inserter.cancel()
            except Exception:  # the append's own error is what the client needs to see
                _log.debug("chdb adaptor: cancelling a failed insert failed", exc_info=True)
            raise
        done = inserter.finish()
        return summary(written_rows=done.rows_written, written_bytes=done.bytes_written, elapsed=done.elapsed)

    def _run(self, use: Use, query: Query, cleanup: contextlib.ExitStack) -> Outcome:
        conn = use.conn
        try:
            for table in query.external:
                name = quote_ident(table.name)
                conn.query(f"CREATE TEMPORARY TABLE {name} ({table.structure})", "TabSeparated")
                # A session outlives the request; its tables must not (dropped when the reply ends).
                cleanup.callback(self._drop_external, conn, table.name)
                self._insert(conn, f"INSERT INTO {name}", table.format, table.data)
            return self._run_query(use, query, cleanup)
        except RuntimeError as exc:
            raise EngineError.from_engine(exc) from None

    @staticmethod
    def _drop_external(conn: Any, name: str) -> None:
        try:
            conn.query(f"DROP TEMPORARY TABLE IF EXISTS {quote_ident(name)}", "TSV")
        except RuntimeError:
            _log.warning("chdb adaptor: external table %s outlives its request", name, exc_info=True)

    def _run_query(self, use: Use, query: Query, cleanup: contextlib.ExitStack) -> Outcome:
        conn = use.conn
        if query.insert_format is not None:
            written = self._insert(conn, query.sql, query.insert_format, query.data)
            return Outcome(b"", None, written)
        if may_hold_several_statements(query.sql) and statement_count(conn, query.sql) > 1:
            raise EngineError.of(62, "SYNTAX_ERROR", "Syntax error: Multi-statements are not allowed")
        sql = query.sql.encode("utf-8", "surrogateescape")  # non-UTF-8 bytes go to the engine as they came
        fmt = result_format(query.sql, query.default_format)
        revision = query.protocol if (fmt or "").lower() == "native" else 0
        # A client that waits for the end of the query (clickhouse-connect's command()) gets the
        # whole result in one engine call; a streaming one gets the rows as they come. Native for a
        # client revision is streamed either way (a chunk is a block: each gets its block info).
        whole = query.wait_end
        if (
            (not whole or revision >= native.REVISION_WITH_BLOCK_INFO)
            and first_word(query.sql) in (b"SELECT", b"WITH")
            and concatenable(fmt or "")
            and streams()
        ):
            try:
                return self._stream(use, query, sql, fmt, cleanup, revision, whole)
            except EngineError as err:
                if not err.message.startswith("Code: 36. DB::Exception: Streaming query is not supported"):
                    raise  # WITH ... INSERT is not a query chdb streams: it runs whole below
        result = conn.query(sql, query.default_format, params=dict(query.params))
        body: bytes = result.bytes()
        if revision >= native.REVISION_WITH_BLOCK_INFO and body:
            body = self._zone_header(query, body, revision) + native.with_block_info(body)
        return Outcome(body, fmt, result_summary([result], len(body)))

    def _zone_header(self, query: Query, first_block: bytes, revision: int) -> bytes:
        """The block restoring ``DateTime('tz')`` column types (:mod:`.native`), or b"": ``DESCRIBE``
        on a connection of its own (the request's may be streaming), only if a type may be one."""
        if revision < native.REVISION_WITH_DATETIME_ZONE or not native.column_types_stripped(first_block):
            return b""
        try:
            use = self._connect(query.settings, query.database)
        except EngineError:
            return b""
        try:
            sql = native.describe_query(query.sql).encode("utf-8", "surrogateescape")
            described = use.conn.query(sql, "JSONEachRow", params=dict(query.params)).bytes()
            return native.zone_header(described)
        except RuntimeError:  # not a statement DESCRIBE takes (or a session's temporary table): as written
            use.ok = False
            return b""
        finally:
            self._let_go(use)

    def _stream(
        self, use: Use, query: Query, sql: bytes, fmt: str | None, cleanup: contextlib.ExitStack, revision: int,
        whole: bool,
    ) -> Outcome:
        # The reply starts once two chunks are in (``whole``: all of them): a result that fits goes out
        # whole, with its summary; a longer one streams, a failure after its first chunks written
        # into the body as a server's exception block.
        chunks = use.chunks = open_stream(use.conn, sql, query.default_format, dict(query.params), cleanup)
        if revision >= native.REVISION_WITH_BLOCK_INFO:
            chunks.prefix = native.BLOCK_INFO
        parts: list[bytes] = []
        header = b""
        try:
            while whole or len(parts) < 2:
                part = chunks.next()
                if part and not parts and revision:
                    header = self._zone_header(query, part, revision)
                if not part:
                    body = header + b"".join(parts)
                    return Outcome(body, fmt, result_summary(chunks.stats, len(body)))
                parts.append(part)
        except BaseException:
            chunks.close()
            raise
        chunks.pending = header + b"".join(parts)
        return Outcome(b"", fmt, result_summary(chunks.stats, 0), rest=chunks)

