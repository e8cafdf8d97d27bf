"""isolated_sqlite(): a private SQLite database file for each test, as an isolated_env resource.

Each test gets its own database file, copied from a template built once per schema, on the real
sqlite3 engine. Files live in a run directory named after the process that owns it, under
isolated_env's state directory; run directories of dead processes are removed by ``reap``. A
failed test's file is moved under ``kept/`` when keep-on-failure is on, and stays there until
``reap(settings, kept=True)``.

Installed, the package registers itself through the ``isolated_env.resources`` entry point, so
isolated_env generates the ``isolated_sqlite`` fixture, the ``requires_sqlite`` marker and
``env["sqlite"]`` for it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import anyio.to_thread
import psutil

import isolated_env as ie

if TYPE_CHECKING:
    import sqlite3

__all__ = ["SqliteHandle", "SqliteResource", "isolated_sqlite"]

T = TypeVar("T")
Parameters = Sequence[Any] | Mapping[str, Any]

_RUN_DIR = re.compile(r"^run-([0-9a-f]{8})-(\d+)-(\d+)$")
_SIDECARS = ("-journal", "-wal", "-shm")
_run_dirs: dict[tuple[Path, int], Path] = {}


def _sqlite() -> Any:
    # Imported on first use: the registry imports this module at every pytest start.
    import sqlite3

    return sqlite3


# -- who owns a run directory ------------------------------------------------------------------


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _started(process: psutil.Process) -> int:
    return int(process.create_time() * 100)


def _alive(pid: int, started: int) -> bool:
    """Whether the process that made a run directory still runs (not a new one with its pid)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and abs(_started(process) - started) <= 1
    except psutil.AccessDenied:
        return True  # it exists and is someone else's: not provably dead
    except psutil.NoSuchProcess:
        return False


def _reap_dead(root: Path) -> list[str]:
    removed = []
    for child in sorted(root.iterdir()) if root.is_dir() else ():
        match = _RUN_DIR.match(child.name)
        if match and match.group(1) == _host() and not _alive(int(match.group(2)), int(match.group(3))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(str(child))
    return removed


def _run_dir(root: Path) -> Path:
    """This process's run directory under ``root``; stale ones are reaped when it is made."""
    key = (root, os.getpid())
    path = _run_dirs.get(key)
    if path is None or not path.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _reap_dead(root)
        path = root / f"run-{_host()}-{os.getpid()}-{_started(psutil.Process())}"
        path.mkdir(mode=0o700, exist_ok=True)
        _run_dirs[key] = path
        atexit.register(shutil.rmtree, path, True)
    return path


# -- one database file -------------------------------------------------------------------------


def _open(path: Path) -> sqlite3.Connection:
    # Autocommit (isolation_level=None): what a test writes is on disk at once, for any other
    # connection to `path`; BEGIN/COMMIT work as written. Handles hop threads, one call at a time.
    connection: sqlite3.Connection = _sqlite().connect(path, isolation_level=None, check_same_thread=False)
    return connection


def _template(run: Path, schema: str) -> Path:
    """The template database for ``schema`` (built once per process, atomically)."""
    path = run / f"template-{hashlib.sha256(schema.encode()).hexdigest()[:16]}.sqlite3"
    if not path.exists():
        fd, name = tempfile.mkstemp(prefix="building-", dir=run)
        os.close(fd)
        building = Path(name)
        connection = _open(building)
        try:
            connection.executescript(schema)
        except _sqlite().Error as exc:
            _unlink(building)
            raise ie.ConfigError(f"the schema given to isolated_sqlite() failed: {exc}; fix the SQL script") from exc
        finally:
            connection.close()
        os.replace(building, path)
    return path


def _unlink(path: Path) -> None:
    for name in (str(path), *(str(path) + suffix for suffix in _SIDECARS)):
        Path(name).unlink(missing_ok=True)


def _fresh_copy(template: Path, path: Path) -> sqlite3.Connection:
    # A new file swapped in by rename: a connection the test left open keeps the old inode instead
    # of reading half-copied pages, and no stale journal can be replayed into the copy.
    partial = path.with_suffix(".copying")
    shutil.copyfile(template, partial)
    _unlink(path)
    os.replace(partial, path)
    return _open(path)


class _Database:
    """What the pool holds: one file and the connection to it."""

    def __init__(self, path: Path, template: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.template = template
        self.connection = connection
        self.lock = anyio.Lock()

    def reset(self) -> None:
        # Closing drops everything a connection holds (open transaction, temp tables, attached
        # databases, pragmas, functions); the copy restores the template's schema and nothing else.
        self.connection.close()
        self.connection = _fresh_copy(self.template, self.path)

    def close(self) -> None:
        self.connection.close()
        _unlink(self.path)

    def keep(self, kept_dir: Path) -> Path:
        if self.connection.in_transaction:
            self.connection.commit()  # the kept file shows what the failed test saw
        self.connection.close()
        kept_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = kept_dir / f"{self.path.stem}-{os.getpid()}.sqlite3"
        os.replace(self.path, target)
        return target


class SqliteHandle:
    """A test's own SQLite database: async ``execute``/``fetch*``/``run`` on the real engine.

    ``.path`` reaches the same database from any other connection or process; ``.connection`` is
    the ``sqlite3.Connection`` itself (its calls block: prefer ``run``).
    """

    def __init__(self, db: _Database) -> None:
        self._db: _Database | None = db

    def __repr__(self) -> str:
        return f"<SqliteHandle {self._db.path if self._db else 'released'}>"

    def _database(self) -> _Database:
        if self._db is None:
            raise ie.IsolatedEnvError("this SQLite handle was released; use it inside its `async with` block")
        return self._db

    @property
    def path(self) -> Path:
        return self._database().path

    @property
    def connection(self) -> sqlite3.Connection:
        return self._database().connection

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Call ``fn(connection)`` in a worker thread, one call at a time."""
        db = self._database()
        async with db.lock:
            return await anyio.to_thread.run_sync(lambda: fn(db.connection))

    async def execute(self, sql: str, parameters: Parameters = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        return await self.run(lambda c: c.execute(sql, parameters).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Parameters]) -> int:
        return await self.run(lambda c: c.executemany(sql, rows).rowcount)

    async def executescript(self, script: str) -> None:
        await self.run(lambda c: c.executescript(script))

    async def fetchall(self, sql: str, parameters: Parameters = ()) -> list[tuple[Any, ...]]:
        return await self.run(lambda c: [tuple(row) for row in c.execute(sql, parameters).fetchall()])

    async def fetchone(self, sql: str, parameters: Parameters = ()) -> tuple[Any, ...] | None:
        row = await self.run(lambda c: c.execute(sql, parameters).fetchone())
        return tuple(row) if row is not None else None

    async def fetchval(self, sql: str, parameters: Parameters = ()) -> Any:
        row = await self.fetchone(sql, parameters)
        return row[0] if row else None

    async def tables(self) -> list[str]:
        """Names of the tables in the database, sorted."""
        rows = await self.fetchall("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        return [name for (name,) in rows]


def _root(settings: ie.Settings) -> Path:
    return settings.state_dir / "sqlite"


class SqliteResource(ie.PooledResource[_Database, SqliteHandle]):
    """A private SQLite database file for one test, reset to its schema when the test ends."""

    kind: ClassVar[str] = "sqlite"
    extra: ClassVar[str | None] = None  # sqlite3 ships with Python

    root: Path

    def __init__(self, schema: str = "", *, keep_on_failure: bool | None = None) -> None:
        self.schema = schema
        self.keep_on_failure = keep_on_failure

    async def prepare(self) -> None:
        self.root = _root(ie.resolve())

    def pool_key(self) -> Hashable:
        # Instances with equal keys share a pool: the schema and the directory are all create() uses.
        return (super().pool_key(), self.schema, str(self.root))

    def pool_name(self) -> str:
        return f"sqlite databases ({self.root})"

    async def create(self) -> _Database:
        def make() -> tuple[Path, Path, sqlite3.Connection]:
            run = _run_dir(self.root)
            template = _template(run, self.schema)
            fd, name = tempfile.mkstemp(prefix="db-", suffix=".sqlite3", dir=run)
            os.close(fd)
            path = Path(name)
            return path, template, _fresh_copy(template, path)

        return _Database(*await anyio.to_thread.run_sync(make))

    async def clean(self, item: _Database) -> None:
        async with item.lock:
            await anyio.to_thread.run_sync(item.reset)

    async def destroy(self, item: _Database) -> None:
        await anyio.to_thread.run_sync(item.close)

    def wrap(self, item: _Database) -> SqliteHandle:
        return SqliteHandle(item)

    async def keep(self, item: _Database) -> ie.Kept:
        async with item.lock:
            target = await anyio.to_thread.run_sync(item.keep, self.root / "kept")
        return ie.Kept("sqlite", str(target), f"sqlite3 {target}")

    async def release(self, handle: SqliteHandle, outcome: ie.Outcome) -> ie.Kept | None:
        handle._db = None  # a handle kept past its block must not reach the next test's data
        return await super().release(handle, outcome)

    @classmethod
    async def reap(cls, settings: ie.Settings, *, kept: bool = False) -> list[str]:
        """Remove the run directories of dead processes and, with ``kept``, the kept files."""
        root = _root(settings)

        def sweep() -> list[str]:
            removed = _reap_dead(root)
            kept_dir = root / "kept"
            if kept and kept_dir.is_dir():
                for child in sorted(kept_dir.iterdir()):
                    child.unlink(missing_ok=True)
                    removed.append(str(child))
            return removed

        return await anyio.to_thread.run_sync(sweep)

    @classmethod
    async def probe(cls, settings: ie.Settings) -> None:
        """Raise ServiceUnavailable when no database file can be made (no sqlite3, no writable
        state directory); the ``requires_sqlite`` marker skips or fails the test on it."""
        root = _root(settings)

        def try_one() -> None:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="probe-", dir=root) as scratch:
                connection = _open(Path(scratch) / "probe.sqlite3")
                try:
                    connection.execute("CREATE TABLE probe (x)")
                finally:
                    connection.close()

        try:
            sqlite3 = _sqlite()
        except ImportError as exc:
            raise ie.ServiceUnavailable("SQLite", f"the sqlite3 module is missing ({exc})",
                                        fix="use a Python built with SQLite") from exc
        try:
            await anyio.to_thread.run_sync(try_one)
        except (OSError, sqlite3.Error) as exc:
            raise ie.ServiceUnavailable(
                "SQLite", f"cannot create a database file under {root} ({exc})",
                fix="point ISOLATED_ENV_STATE_DIR at a writable directory",
            ) from exc

    @classmethod
    async def self_check(cls) -> None:
        """Raise IsolatedEnvError unless two live handles are apart and nothing survives a release."""
        async with ie.ResourceContext(cls()) as a, ie.ResourceContext(cls()) as b:
            await a.execute("CREATE TABLE ie_self_check (x)")
            if a.path == b.path or "ie_self_check" in await b.tables():
                raise ie.IsolatedEnvError("isolation self-check failed: two tests shared an SQLite database")
            await b.execute("CREATE TABLE ie_self_check (x)")
        async with ie.ResourceContext(cls()) as c:  # reuses a's or b's file: both held the table
            if await c.tables():
                raise ie.IsolatedEnvError(f"isolation self-check failed: tables survived their test in {c.path}")


def isolated_sqlite(schema: str = "", *, keep_on_failure: bool | None = None) -> ie.ResourceContext[SqliteHandle]:
    """A private SQLite database file for one test, reset to ``schema`` when the test ends.

    ``schema`` (an SQL script) is run once into a template that every database is copied from.
    With ``keep_on_failure`` (or ``--isolated-env-keep-failed``) a failed test's file is kept and
    the pytest summary says where.
    """
    return ie.ResourceContext(SqliteResource(schema, keep_on_failure=keep_on_failure))


isolated_sqlite.resource_class = SqliteResource  # type: ignore[attr-defined]
