"""Database mode: a private PostgreSQL database per test, cloned from a template, from a warm pool.

The idea is IntegreSQL's, done in-process: templates are built once, named by a hash of their
content, and reused for as long as that hash holds (also by later runs while the server is up);
clones (``CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY``) are made ahead of demand by
background tasks of the event loop, each with a connection already open, so a lease is a pop from
a list. A released database is never handed out again: it is dropped in the background. Every
database carries its owner (host, pid, run) in a comment; :func:`~.postgres.reap_orphans` removes
those of dead processes at the next start, and a failed test's database can be kept
(``keep_on_failure``) until :func:`prune` removes it.

asyncpg only runs on asyncio, so the background tasks are asyncio tasks; they live and die with
the event loop's :class:`~isolated_env._runtime.LoopScope`. The names of clones that were made but
never leased outlive a loop (a database does not belong to a loop) and are reused by the next one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio

from .._config import hostname, run_id
from .._errors import ConfigError, PoolClosed, ServiceUnavailable, TemplateError
from .._metrics import percentile
from .._pool import Pool
from .._resource import current_settings
from .._runtime import LoopScope, current_scope
from .._servers import postgres as servers
from .._servers import registry
from .._servers.postgres import PostgresServer
from .._servers.registry import owner_alive, owner_tag
from . import postgres as _tx
from .postgres import PostgresHandle, connect, create_database, disown, own, quote_ident, reap_orphans, server_key

__all__ = [
    "DatabaseHandle",
    "KeptDatabase",
    "PostgresTemplate",
    "TemplateBuild",
    "WarmPoolStatistics",
    "build_template",
    "database_mode",
    "kept_databases",
    "mark_failed",
    "prune",
    "settle",
    "template_database",
    "warm_pool_statistics",
]

_FORMAT = "1"  # bump when the way templates are built changes, so old ones are not reused
_LOCK_CLASS = 0x1E7E  # first key of our advisory locks (pg_advisory_lock(int4, int4))
_MAX_WORKERS = 4  # concurrent clones per pool: FILE_COPY checkpoints coalesce, 2-4 in flight is fastest




def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------------------------------------
# Templates


SetupFn = Callable[[PostgresHandle], Awaitable[None]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PostgresTemplate:
    """What a test database starts from: SQL text, SQL files and/or an async ``setup(db)`` callable.

    Built once into a template database named by a hash of its content (the SQL, the files'
    contents, the callable's name, source and ``version``) and reused while that hash holds; change
    any of it and the next use builds a new one. Bump ``version`` when ``setup`` depends on
    something the hash cannot see (a migrations directory, an imported helper). Steps run in order:
    ``sql``, then ``files``, then ``setup``; SQL runs one statement at a time, as psql would.
    """

    sql: str | None = None
    files: Sequence[str | os.PathLike[str]] = ()
    setup: SetupFn | None = None
    name: str = "template"
    version: str = ""

    def __post_init__(self) -> None:
        files = self.files
        if isinstance(files, (str, os.PathLike)):
            files = (files,)
        object.__setattr__(self, "files", tuple(Path(f) for f in files))
        if self.sql is not None and not isinstance(self.sql, str):
            raise ConfigError(f"PostgresTemplate(sql=...) must be a string, not {type(self.sql).__name__}")
        if self.setup is not None and not callable(self.setup):
            raise ConfigError("PostgresTemplate(setup=...) must be an async callable taking the handle")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"PostgresTemplate(name={self.name!r}) must be a non-empty string")

    @functools.cached_property
    def _content(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The content hash and the SQL sources (label, text), read once so the hash matches what runs."""
        h = hashlib.sha256()

        def feed(tag: str, data: str) -> None:
            raw = data.encode()
            h.update(tag.encode() + b"\0" + len(raw).to_bytes(8, "big") + raw)

        feed("format", _FORMAT)
        feed("name", self.name)
        sources: list[tuple[str, str]] = []
        if self.sql is not None:
            feed("sql", self.sql)
            sources.append(("sql", self.sql))
        for path in self.files:
            assert isinstance(path, Path)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TemplateError(f"template {self.name!r}: cannot read SQL file {path}: {exc}") from exc
            feed("file", text)
            sources.append((str(path), text))
        if self.setup is not None:
            fn = self.setup
            feed("setup", f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}")
            with contextlib.suppress(OSError, TypeError):
                feed("source", inspect.getsource(fn))
        feed("version", str(self.version))
        return h.hexdigest(), tuple(sources)

    @property
    def digest(self) -> str:
        """The content hash (hex) that names the template database."""
        return self._content[0]

    @property
    def database_name(self) -> str:
        """The name of the built template database: ``ie_tpl_<name>_<hash>``."""
        slug = re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")[:24] or "t"
        return f"ie_tpl_{slug}_{self.digest[:16]}"


_EMPTY = PostgresTemplate(name="empty")


def _as_template(template: object) -> PostgresTemplate:
    if template is None:
        return _EMPTY
    if isinstance(template, PostgresTemplate):
        return template
    raise ConfigError(
        f"isolated_postgres(template={template!r}): a template must be an isolated_env.PostgresTemplate, "
        "e.g. PostgresTemplate(sql='CREATE TABLE …') or PostgresTemplate(files=['schema.sql'])"
    )


# Matched in place (pattern.match(text, i)): slicing text[i:] per word made splitting quadratic.
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def split_sql(text: str) -> list[tuple[int, str]]:
    """The statements of a SQL script, each with the line it starts on, split where psql would.

    Semicolons inside quotes, dollar quotes, comments, parentheses and ``BEGIN ATOMIC … END``
    bodies do not end a statement.
    """
    out: list[tuple[int, str]] = []
    n = len(text)
    i = 0
    paren = atomic = 0
    code_at = -1  # first character of code (not comment/space) in the current statement
    words: list[str] = []
    counted_to, line = 0, 1  # newlines are counted incrementally: recounting from 0 was quadratic

    def finish(end: int) -> None:
        nonlocal code_at, words, paren, atomic, counted_to, line
        if code_at >= 0:
            line += text.count("\n", counted_to, code_at)
            counted_to = code_at
            out.append((line, text[code_at:end].strip()))
        code_at, words, paren, atomic = -1, [], 0, 0

    while i < n:
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if ch == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        if ch == ";" and paren == 0 and atomic == 0:
            finish(i)
            i += 1
            continue
        if code_at < 0:
            code_at = i
        if ch == "'":
            before = text[i - 2] if i >= 2 else " "
            escapes = i > 0 and text[i - 1] in "eE" and not (before.isalnum() or before == "_")
            i += 1
            while i < n:
                if escapes and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "'":
                    if text.startswith("''", i):
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if ch == '"':
            end = i + 1
            while True:
                end = text.find('"', end)
                if end < 0 or not text.startswith('""', end):
                    break
                end += 2
            i = n if end < 0 else end + 1
            continue
        if ch == "$" and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = _DOLLAR_TAG.match(text, i)
            if m:
                tag = m.group(0)
                end = text.find(tag, i + len(tag))
                i = n if end < 0 else end + len(tag)
                continue
        if ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(0, paren - 1)
        elif ch.isalpha() or ch == "_":
            m = _WORD.match(text, i)
            assert m is not None
            word = m.group(0).upper()
            if len(words) < 4:
                words.append(word)
            routine = words[:1] == ["CREATE"] and ("FUNCTION" in words or "PROCEDURE" in words)
            if routine and word == "BEGIN":
                atomic += 1
            elif atomic and word == "CASE":
                atomic += 1
            elif atomic and word == "END":
                atomic -= 1
            i += len(m.group(0))
            continue
        i += 1
    finish(n)
    return out


@dataclasses.dataclass(frozen=True)
class TemplateBuild:
    """The outcome of :func:`build_template`: which database, and whether this call built it."""

    database: str
    digest: str
    built: bool
    ms: float


_templates_lock = threading.Lock()
_templates: dict[tuple[str, str], str] = {}




def _forget_template(server: PostgresServer, template: PostgresTemplate) -> None:
    with _templates_lock:
        _templates.pop((server_key(server), template.digest), None)


async def _template_ready(admin: Any, name: str) -> bool:
    row = await admin.fetchrow(
        "SELECT datistemplate AND NOT datallowconn AS ready FROM pg_database WHERE datname = $1", name
    )
    return bool(row and row["ready"])


async def template_database(server: PostgresServer, template: object) -> str:
    """The name of ``template``'s built template database on ``server`` (built first if needed).

    The template never has an open connection: it is closed to connections once built.
    """
    return (await build_template(server, _as_template(template))).database


async def build_template(server: PostgresServer, template: PostgresTemplate) -> TemplateBuild:
    """Build ``template`` unless a database with its content hash exists; at most one builder
    at a time per server (an advisory lock), so racing processes build it once."""
    key = (server_key(server), template.digest)
    with _templates_lock:
        known = _templates.get(key)
    if known is not None:
        return TemplateBuild(known, template.digest, built=False, ms=0.0)
    started = time.perf_counter()
    name = template.database_name
    lock = int.from_bytes(bytes.fromhex(template.digest[:8]), "big", signed=True)
    built = False
    admin = await connect(server)
    try:
        if not await _template_ready(admin, name):
            await admin.execute("SELECT pg_advisory_lock($1, $2)", _LOCK_CLASS, lock)
            try:
                if not await _template_ready(admin, name):
                    await _build(admin, server, template, name)
                    built = True
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await admin.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_CLASS, lock)
    finally:
        with anyio.CancelScope(shield=True):
            await _close(admin)
    with _templates_lock:
        _templates[key] = name
    return TemplateBuild(name, template.digest, built=built, ms=(time.perf_counter() - started) * 1000)


async def _build(admin: Any, server: PostgresServer, template: PostgresTemplate, name: str) -> None:
    asyncpg = _tx._asyncpg()
    _digest, sources = template._content
    # A database of this name that is not a finished template was left by a builder that died
    # (we hold the lock, so nobody is building it now).
    await _drop(admin, name)
    try:
        await create_database(admin, server, name, "template1", building=template.name)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise _no_createdb(server, exc) from exc
    except asyncpg.PostgresError as exc:
        raise TemplateError(f"template {template.name!r}: cannot create its database {name}: {exc}") from exc
    try:
        conn = await connect(server, name)
        try:
            for source, text in sources:
                for number, (line, statement) in enumerate(split_sql(text), 1):
                    try:
                        await conn.execute(statement)
                    except asyncpg.PostgresError as exc:
                        message = _statement_failed(template, source, number, line, statement, exc)
                        raise TemplateError(message) from exc
            if template.setup is not None:
                handle = PostgresHandle(conn, server, name, "template", None)
                try:
                    await template.setup(handle)
                except Exception as exc:
                    fn = getattr(template.setup, "__qualname__", repr(template.setup))
                    raise TemplateError(f"template {template.name!r}: setup {fn}() failed: {exc!r}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await _close(conn)
        await _disconnect_all(admin, name)
        label = json.dumps({"template": template.name, "digest": template.digest, "run": run_id(),
                            "built_at": round(time.time()), "built_by": owner_tag()})
        async with admin.transaction():  # finished and labelled in one step: complete, or not there
            await admin.execute(
                f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            )
            await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {_quote_literal(label)}")
    except BaseException:
        # Nothing half-built is left behind, even when the build is cancelled.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await _drop(admin, name)
        raise


def _statement_failed(
    template: PostgresTemplate, source: str, number: int, line: int, statement: str, exc: Exception
) -> str:
    where = "its sql" if source == "sql" else source
    shown = " ".join(statement.split())
    if len(shown) > 300:
        shown = shown[:297] + "..."
    detail = getattr(exc, "detail", None)
    return (
        f"template {template.name!r}: statement {number} of {where} (line {line}) failed: {shown!r}: "
        f"{type(exc).__name__}: {exc}" + (f" ({detail})" if detail else "")
        + "; nothing was kept, fix the SQL"
    )


async def _disconnect_all(admin: Any, name: str) -> None:
    """End every session on ``name`` (a setup's stray connections) and wait until they are gone:
    a template with an open connection cannot be cloned."""
    for _ in range(5000):
        if not await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        ):
            return
        await anyio.sleep(0.002)
    raise TemplateError(f"sessions on the template database {name} did not end within 10 s")


async def _drop(admin: Any, name: str) -> None:
    """Drop a database of ours, template or not, ending its sessions."""
    ident = quote_ident(name)
    with contextlib.suppress(_tx._asyncpg().InvalidCatalogNameError):
        await admin.execute(f"ALTER DATABASE {ident} WITH IS_TEMPLATE false")
    await admin.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")


async def _close(conn: Any) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:  # a broken connection is closed the hard way
        conn.terminate()


def _no_createdb(server: PostgresServer, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable(
        "PostgreSQL",
        f"user {server.user!r} may not create databases on {server.host}:{server.port} ({exc})",
        fix=f"ALTER ROLE {server.user} CREATEDB, or use isolated_postgres(mode='transaction')",
    )


# ---------------------------------------------------------------------------------------------
# What this process owns, across event loops: dropped at exit, reaped by others if we are killed.

_spare_lock = threading.Lock()
_spare: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # clean, unleased, no connection
_counter = itertools.count(1)


def _new_name(server: PostgresServer) -> str:
    name = f"ie_db_{run_id()}_{os.getpid()}_{next(_counter)}"
    own(name, server)
    return name


def _disown(name: str) -> None:
    disown(name)


_reap_lock = threading.Lock()


_reaped_unlabelled: set[str] = set()


async def _reap_once(server: PostgresServer) -> None:
    """Remove dead owners' databases the first time this process uses the server."""
    key = server_key(server)
    with _reap_lock:
        labelled = key not in _tx._reaped
        unlabelled = key not in _reaped_unlabelled
        _tx._reaped.add(key)
        _reaped_unlabelled.add(key)
    if not (labelled or unlabelled):
        return
    admin = await connect(server)
    try:
        if labelled:
            await reap_orphans(server, admin)
        if unlabelled:
            await _reap_unlabelled(server, admin)
    finally:
        await _close(admin)


async def _reap_unlabelled(server: PostgresServer, admin: Any) -> list[str]:
    """Drop clones whose creator was killed between CREATE DATABASE and labelling it.

    Only on the embedded server, whose every client runs on this host: there the pid in the name
    is enough to tell that the creator is dead. A name whose pid is alive is left alone.
    """
    if server.source != "embedded":
        return []
    rows = await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE 'ie\\_db\\_%' "
        "AND shobj_description(oid, 'pg_database') IS NULL"
    )
    dropped = []
    for row in rows:
        match = re.fullmatch(r"ie_db_[a-z0-9]+_(\d+)_\d+", row["datname"])
        if match is None or owner_alive({"host": hostname(), "pid": int(match.group(1))}) is not False:
            continue
        with contextlib.suppress(Exception):
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(row['datname'])} WITH (FORCE)")
            dropped.append(row["datname"])
    return dropped


# ---------------------------------------------------------------------------------------------
# The warm pool: clones made ahead of demand by background tasks of one event loop.


@dataclasses.dataclass
class _Clone:
    name: str
    conn: Any
    kept: bool = False


@dataclasses.dataclass(frozen=True)
class WarmPoolStatistics:
    """A snapshot of one warm pool; times in milliseconds."""

    template: str
    target: int
    ready: int
    in_flight: int
    clones: int
    reused_spares: int
    clone_p50_ms: float
    clone_p95_ms: float
    drops: int
    pending_drops: int
    starved: int  # leases that found no ready clone and waited for one
    errors: int


class _WarmPool:
    """Ready clones of one template for one event loop, refilled by worker tasks, drained by a dropper."""

    def __init__(
        self, server: PostgresServer, template: PostgresTemplate, template_name: str, target: int
    ) -> None:
        self.server = server
        self.template = template
        self.template_name = template_name
        self.target = target
        self.ready: collections.deque[_Clone] = collections.deque()
        self.waiters: collections.deque[asyncio.Future[_Clone]] = collections.deque()
        self.creating: set[str] = set()
        self.drops: collections.deque[str] = collections.deque()
        self.dropping: set[str] = set()
        self.closed = False
        self._wake = asyncio.Event()
        self._wake_dropper = asyncio.Event()
        self._dropped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._clone_ms: collections.deque[float] = collections.deque(maxlen=10_000)
        self._clones = self._spares = self._drops_done = self._starved = self._errors = 0
        self.last_error: BaseException | None = None

    @property
    def spare_key(self) -> tuple[str, str]:
        return (server_key(self.server), self.template_name)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        workers = max(1, min(_MAX_WORKERS, self.target))
        self._tasks = [loop.create_task(self._worker(), name=f"isolated_env refill {self.template_name}")
                       for _ in range(workers)]
        self._tasks.append(loop.create_task(self._dropper(), name=f"isolated_env drop {self.template_name}"))

    # -- leasing --------------------------------------------------------------------------

    async def take(self) -> _Clone:
        """A ready clone at once, or the next one made; never waits for refill when one is ready."""
        if self.closed:
            raise PoolClosed(f"the warm pool of {self.template_name} is closed (its event loop ended)")
        while self.ready:
            clone = self.ready.popleft()
            self._wake.set()
            if not clone.conn.is_closed():
                return clone
            self.release(clone)
        self._starved += 1
        waiter: asyncio.Future[_Clone] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self._wake.set()
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._deliver(waiter.result())  # got one just as we gave up: pass it on
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            raise

    def release(self, clone: _Clone) -> None:
        """Close the clone's connection and have it dropped in the background (kept ones stay)."""
        clone.conn.terminate()
        if clone.kept:
            return
        if self.closed:
            return  # still owned (postgres.own): dropped at exit
        self.drops.append(clone.name)
        self._wake_dropper.set()

    def _deliver(self, clone: _Clone) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(clone)
                return
        self.ready.append(clone)

    def _fail_waiters(self, exc: BaseException) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    # -- background -----------------------------------------------------------------------

    def _wanted(self) -> int:
        return self.target + len(self.waiters) - len(self.ready) - len(self.creating)

    async def _worker(self) -> None:
        asyncpg = _tx._asyncpg()
        admin: Any = None
        backoff = 0.05
        try:
            while True:
                while self._wanted() <= 0:
                    self._wake.clear()
                    await self._wake.wait()
                spare = self._take_spare()
                name = spare or _new_name(self.server)
                self.creating.add(name)
                started = time.perf_counter()
                created = spare is not None
                try:
                    if spare is None:
                        if admin is None or admin.is_closed():
                            admin = await connect(self.server)
                        await create_database(admin, self.server, name, self.template_name, mode="database",
                                              origin=self.template_name)
                        created = True
                    conn = await connect(self.server, name)
                except Exception as exc:  # reported to waiting leases, then retried
                    self.creating.discard(name)
                    if created:  # the database exists but cannot be used: drop it
                        self.drops.append(name)
                        self._wake_dropper.set()
                    else:
                        _disown(name)
                    if spare is not None:
                        continue  # a spare that vanished or broke: make another
                    self._errors += 1
                    self.last_error = exc
                    if isinstance(exc, asyncpg.InvalidCatalogNameError):
                        # The template was dropped under us (prune --templates): build it again.
                        _forget_template(self.server, self.template)
                        with contextlib.suppress(Exception):
                            self.template_name = await template_database(self.server, self.template)
                            continue
                    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
                        exc = _no_createdb(self.server, exc)
                    self._fail_waiters(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.05
                self.creating.discard(name)
                if spare is None:
                    self._clones += 1
                    self._clone_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self._spares += 1
                self._deliver(_Clone(name, conn))
        finally:
            if admin is not None:
                admin.terminate()

    def _take_spare(self) -> str | None:
        with _spare_lock:
            spares = _spare.get(self.spare_key)
            return spares.pop() if spares else None

    async def _dropper(self) -> None:
        admin: Any = None
        try:
            while True:
                while not self.drops:
                    self._dropped.set()
                    self._wake_dropper.clear()
                    await self._wake_dropper.wait()
                self._dropped.clear()
                name = self.drops.popleft()
                self.dropping.add(name)
                try:
                    if admin is None or admin.is_closed():
                        admin = await connect(self.server)
                    await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
                except Exception as exc:  # left for the exit handler and the reaper
                    self._errors += 1
                    self.last_error = exc
                    await asyncio.sleep(0.05)
                else:
                    self._drops_done += 1
                    _disown(name)
                finally:
                    self.dropping.discard(name)
        finally:
            if admin is not None:
                admin.terminate()

    async def settle(self) -> None:
        """Wait until every released database has been dropped."""
        while (self.drops or self.dropping) and not self.closed:
            self._dropped.clear()
            await self._dropped.wait()

    async def aclose(self) -> None:
        """Stop the tasks; unleased clones become spares for the next loop, pending drops are done now."""
        self.closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_waiters(PoolClosed(f"the warm pool of {self.template_name} closed with its event loop"))
        spares = []
        while self.ready:
            clone = self.ready.popleft()
            clone.conn.terminate()
            spares.append(clone.name)
        with _spare_lock:
            _spare[self.spare_key].extend(spares)
        # Clones interrupted mid-creation may or may not exist: drop them if they do.
        leftovers = [*self.drops, *self.dropping, *self.creating]
        self.drops.clear()
        self.dropping.clear()
        self.creating.clear()
        if leftovers:
            with anyio.move_on_after(10), contextlib.suppress(Exception):
                admin = await connect(self.server)
                try:
                    # An interrupted CREATE DATABASE may still be running on the server: a DROP
                    # before it commits would miss it, so wait for it to finish first.
                    for _ in range(5000):
                        if not await admin.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                            "pid <> pg_backend_pid() AND query LIKE 'CREATE DATABASE %' AND "
                            "split_part(query, '\"', 2) = ANY($1::text[])",
                            leftovers,
                        ):
                            break
                        await asyncio.sleep(0.002)
                    for name in leftovers:
                        await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
                        _disown(name)
                finally:
                    await _close(admin)

    def statistics(self) -> WarmPoolStatistics:
        samples = sorted(self._clone_ms)
        return WarmPoolStatistics(
            template=self.template_name,
            target=self.target,
            ready=len(self.ready),
            in_flight=len(self.creating),
            clones=self._clones,
            reused_spares=self._spares,
            clone_p50_ms=percentile(samples, 0.5),
            clone_p95_ms=percentile(samples, 0.95),
            drops=self._drops_done,
            pending_drops=len(self.drops) + len(self.dropping),
            starved=self._starved,
            errors=self._errors,
        )


def _warm_pool(
    scope: LoopScope, server: PostgresServer, template: PostgresTemplate, template_name: str, target: int
) -> _WarmPool:
    key = ("postgres-warm", server_key(server), template_name, target)
    warm = scope.objects.get(key)
    if warm is None or warm.closed:
        warm = scope.objects[key] = _WarmPool(server, template, template_name, target)
        warm.start()
        scope.on_close(warm.aclose)
    return warm


def _warm_pools(scope: LoopScope) -> list[_WarmPool]:
    return [v for k, v in list(scope.objects.items()) if isinstance(k, tuple) and k[:1] == ("postgres-warm",)]


async def settle() -> None:
    """Wait until every database released in this event loop has been dropped (releases drop in
    the background so that a test's teardown does not wait for ``DROP DATABASE``)."""
    for warm in _warm_pools(await current_scope()):
        await warm.settle()


async def warm_pool_statistics() -> list[WarmPoolStatistics]:
    """Statistics of this event loop's warm pools (one per template and capacity)."""
    return [warm.statistics() for warm in _warm_pools(await current_scope())]


# ---------------------------------------------------------------------------------------------
# The handle and the resource


class DatabaseHandle(PostgresHandle):
    """A private database: asyncpg's query API on one connection, ``.dsn`` for any other client.

    Commits are allowed and any number of connections may be opened to ``.dsn``; on release the
    database is dropped (their sessions are ended), unless it is kept for a failed test.
    """

    def __init__(
        self, clone: _Clone, server: PostgresServer, pool: Pool[_Clone], template: str, keep_on_failure: bool
    ) -> None:
        super().__init__(clone.conn, server, clone.name, "database", pool)
        self.template = template
        self.keep_on_failure = keep_on_failure
        self.kept = False
        self.failed = False
        self._ie_clone = clone

    async def _ie_reset(self) -> None:
        """Back to a fresh copy of the template under the same name, so ``.dsn`` stays valid."""
        self.connection.terminate()
        admin = await connect(self.server)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.database)} WITH (FORCE)")
            await create_database(admin, self.server, self.database, self.template, mode="database",
                                  origin=self.template)
        finally:
            await _close(admin)
        self.connection = self._ie_clone.conn = await connect(self.server, self.database)


def _redacted_dsn(server: PostgresServer, database: str) -> str:
    dsn = server.dsn(database)
    if server.password:
        from urllib.parse import quote

        dsn = dsn.replace(":" + quote(server.password, safe="") + "@", ":***@", 1)
    return dsn


def mark_failed(handle: object) -> str | None:
    """Tell a database-mode handle that its test failed, before teardown (for the pytest plugin).

    With ``keep_on_failure=True`` the database is then kept on release instead of dropped; returns
    its DSN (password redacted) to print in the report, or None when nothing will be kept.
    """
    if not isinstance(handle, DatabaseHandle):
        return None
    handle.failed = True
    return _redacted_dsn(handle.server, handle.database) if handle.keep_on_failure else None


async def _keep(handle: DatabaseHandle, reason: str) -> str:
    """Relabel the database as kept (the reaper and the exit handler leave it alone); a note for
    the report saying where it is, or why it could not be kept (then it is dropped as usual)."""
    label = {**owner_tag(), "run": run_id(), "mode": "database", "origin": handle.template,
             "keep": True, "kept_at": round(time.time()), "reason": reason[:500]}
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(10):
            admin = await connect(handle.server)
            try:
                comment = _quote_literal(json.dumps(label))
                await admin.execute(f"COMMENT ON DATABASE {quote_ident(handle.database)} IS {comment}")
            finally:
                await _close(admin)
    except Exception as exc:  # the test's own failure matters more than the keeping of its evidence
        return f"isolated_env could not keep this test's database {handle.database}: {exc}"
    handle.kept = handle._ie_clone.kept = True
    _disown(handle.database)
    stays = ""
    if handle.server.source == "embedded":
        # Evidence on a server that stops with the run would be gone before anyone looks at it.
        settings = current_settings()
        await anyio.to_thread.run_sync(registry.pin, "postgres", settings.state_dir)
        stays = "; the embedded server stays up until `isolated-env down`"
    return (
        f"isolated_env kept this test's database {handle.database}: "
        f"{_redacted_dsn(handle.server, handle.database)} (remove it with `isolated-env prune --kept`{stays})"
    )


@contextlib.asynccontextmanager
async def database_mode(
    *, template: object = None, keep_on_failure: bool = False
) -> AsyncIterator[PostgresHandle]:
    """A private database cloned from ``template`` (an empty one by default), leased from the warm pool."""
    tpl = _as_template(template)
    settings = current_settings()
    server = await servers.ensure_server(settings)
    await _reap_once(server)
    template_name = await template_database(server, tpl)
    scope = await current_scope()
    warm = _warm_pool(scope, server, tpl, template_name, settings.capacity)

    async def take() -> _Clone:
        return await warm.take()

    async def release(clone: _Clone) -> None:
        warm.release(clone)

    pool = scope.pool(
        ("postgres-db", server_key(server), template_name, settings.capacity),
        lambda: Pool(f"postgres databases ({template_name})", create=take, destroy=release,
                     capacity=settings.capacity, lease_timeout=settings.lease_timeout),
    )
    async with pool.lease() as lease:
        lease.discard()  # a used database is never handed out again
        handle = DatabaseHandle(lease.value, server, pool, warm.template_name, keep_on_failure)
        try:
            yield handle
        except BaseException as exc:
            if keep_on_failure and not isinstance(exc, GeneratorExit):
                exc.add_note(await _keep(handle, f"{type(exc).__name__}: {exc}"))
            raise
        if keep_on_failure and handle.failed:
            await _keep(handle, "the test failed")


# ---------------------------------------------------------------------------------------------
# Kept databases and pruning (the CLI's `isolated-env prune`)


@dataclasses.dataclass(frozen=True)
class KeptDatabase:
    """A failed test's database kept by ``keep_on_failure``."""

    name: str
    dsn: str
    run: str
    host: str
    pid: int | None
    kept_at: float | None
    reason: str


async def kept_databases(server: PostgresServer) -> list[KeptDatabase]:
    """The databases kept for failed tests on ``server``, oldest first."""
    admin = await connect(server)
    try:
        return _kept(server, await _labelled(admin))
    finally:
        await _close(admin)


async def _labelled(admin: Any) -> list[tuple[str, bool, dict[str, Any]]]:
    rows = await admin.fetch(
        "SELECT datname, datistemplate, shobj_description(oid, 'pg_database') AS label FROM pg_database "
        "WHERE datname LIKE 'ie\\_%' ORDER BY oid"
    )
    out = []
    for row in rows:
        try:
            label = json.loads(row["label"] or "{}")
        except ValueError:
            label = {}
        out.append((row["datname"], row["datistemplate"], label if isinstance(label, dict) else {}))
    return out


def _kept(server: PostgresServer, rows: Iterable[tuple[str, bool, dict[str, Any]]]) -> list[KeptDatabase]:
    return [
        KeptDatabase(
            name=name,
            dsn=_redacted_dsn(server, name),
            run=str(label.get("run", "")),
            host=str(label.get("host", "")),
            pid=label.get("pid"),
            kept_at=label.get("kept_at"),
            reason=str(label.get("reason", "")),
        )
        for name, is_template, label in rows
        if label.get("keep") and not is_template
    ]


async def prune(
    server: PostgresServer, *, kept: bool = True, orphans: bool = False, templates: bool = False
) -> list[str]:
    """Drop what isolated_env left on ``server`` and return the names dropped: the databases kept
    for failed tests (``kept``); with ``orphans=True`` also those of dead processes on this host
    (what the reaper does at start, plus clones whose creator died before labelling them); with
    ``templates=True`` every built template (a run that still needs one builds it again).
    A live run's databases are never touched."""
    admin = await connect(server)
    try:
        rows = await _labelled(admin)
        dropped: list[str] = []
        if kept:
            for item in _kept(server, rows):
                with contextlib.suppress(Exception):
                    await _drop(admin, item.name)
                    dropped.append(item.name)
        if orphans:
            await reap_orphans(server, admin)
            gone = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
            gone = {name for name, _t, _l in rows} - gone
            dropped.extend(name for name, _t, label in rows if name in gone and owner_alive(label) is False)
            dropped.extend(await _reap_unlabelled(server, admin))
        if templates:
            for name, is_template, _label in rows:
                if is_template and name.startswith("ie_tpl_"):
                    with contextlib.suppress(Exception):
                        await _drop(admin, name)
                        dropped.append(name)
            with _templates_lock:
                for key in [k for k, v in _templates.items() if v in dropped]:
                    del _templates[key]
        return dropped
    finally:
        await _close(admin)
