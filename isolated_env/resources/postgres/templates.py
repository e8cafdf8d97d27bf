"""Templates: what a test database starts from, built once into a database named by a hash of its
content and reused while that hash holds (also by later runs while the server is up).

A build runs under an advisory lock, so racing processes build a template once; it is finished
and labelled in one step, and nothing half-built is left behind, even when it is cancelled. It is built under a name of
its own (``ie_tpb_…``) and renamed into place as it is sealed, so nothing can copy it half-built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio

from ..._config import run_id
from ..._drivers import asyncpg as driver
from ..._errors import ConfigError, TemplateError
from ..._ownership import me
from ..._servers.postgres import PostgresServer
from .handle import PostgresHandle
from .labels import create_database, drop, no_createdb, server_key
from .roles import Rails, rails, ready
from .sql import quote_ident, quote_literal, split_sql

__all__ = [
    "PostgresTemplate",
    "TemplateBuild",
    "as_template",
    "build_template",
    "forget_template",
    "forget_templates",
    "template_database",
]

log = logging.getLogger("isolated_env")

_FORMAT = "2"  # bump when the way templates are built changes, so old ones are not reused
_LOCK_CLASS = 0x1E7E  # first key of our advisory locks (pg_advisory_lock(int4, int4))

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

    @classmethod
    def from_alembic(
        cls, config: str | os.PathLike[str] = "alembic.ini", *, revision: str = "head", name: str = "alembic",
        driver: str | None = None,
    ) -> PostgresTemplate:
        """A template made by ``alembic upgrade <revision>`` with the project's own ``config`` (an
        ``alembic.ini``), its hash covering that file and every file under its ``script_location``
        (``env.py``, the versions): change a migration and the next use builds a new template.

        Alembic runs in a subprocess (its ``env.py`` may call ``asyncio.run`` and reconfigure logging)
        with ``sqlalchemy.url`` set to the template database, using ``driver`` (default: the one
        named in the ini's ``sqlalchemy.url``, else ``psycopg``).
        """
        ini = Path(config).resolve()
        digest, driver = _alembic_digest(ini, revision, driver)
        return cls(setup=_alembic_setup(ini, revision, driver), name=name, version=f"alembic {digest}")

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
            # No source (a REPL, a builtin, a C callable): its qualified name and ``version`` are the hash.
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


def _alembic_digest(ini: Path, revision: str, driver: str | None) -> tuple[str, str]:
    """A hash of ``ini``, every file under its ``script_location`` and ``revision``; and the driver."""
    import configparser

    parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
    try:
        parser.read_string(ini.read_text(encoding="utf-8"), source=str(ini))
        location = parser.get("alembic", "script_location")
        url = parser.get("alembic", "sqlalchemy.url", fallback="")
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"PostgresTemplate.from_alembic({str(ini)!r}): cannot read script_location: {exc}") from exc
    scripts = ini.parent / location  # relative to the ini's directory, where alembic is run
    if not scripts.is_dir():
        raise ConfigError(
            f"PostgresTemplate.from_alembic({str(ini)!r}): script_location {location!r} is not a directory "
            "(a 'package:dir' location is not supported; give the directory's path)"
        )
    if driver is None:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        driver = scheme.split("+", 1)[1] if "+" in scheme else "psycopg"
    h = hashlib.sha256(f"{revision}\0{driver}\0".encode() + ini.read_bytes())
    for path in sorted(p for p in scripts.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(b"\0" + str(path.relative_to(scripts)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest(), driver


_ALEMBIC_RUN = """
import sys
from alembic import command
from alembic.config import Config
config = Config(sys.argv[1])
config.set_main_option("sqlalchemy.url", sys.argv[2].replace("%", "%%"))
command.upgrade(config, sys.argv[3])
"""


def _alembic_setup(ini: Path, revision: str, driver: str) -> SetupFn:
    async def alembic_upgrade(db: PostgresHandle) -> None:
        import subprocess
        import sys

        scheme, rest = db.dsn.split("://", 1)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        result = await anyio.run_process(
            [sys.executable, "-c", _ALEMBIC_RUN, str(ini), f"{scheme}+{driver}://{rest}", revision],
            cwd=ini.parent, env=env, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace").strip()[-3000:]
            raise TemplateError(f"alembic upgrade {revision} ({ini}) exited with {result.returncode}:\n{output}")

    return alembic_upgrade


def as_template(template: object) -> PostgresTemplate:
    """``template`` checked, or the empty template for None."""
    if template is None:
        return _EMPTY
    if isinstance(template, PostgresTemplate):
        return template
    raise ConfigError(
        f"isolated_postgres(template={template!r}): a template must be an isolated_env.PostgresTemplate, "
        "e.g. PostgresTemplate(sql='CREATE TABLE …') or PostgresTemplate(files=['schema.sql'])"
    )


@dataclasses.dataclass(frozen=True)
class TemplateBuild:
    """The outcome of :func:`build_template`: which database, and whether this call built it."""

    database: str
    digest: str
    built: bool
    ms: float


_templates_lock = threading.Lock()
_templates: dict[tuple[str, str], str] = {}  # (server key, digest) -> built template database


def forget_template(server: PostgresServer, template: PostgresTemplate) -> None:
    """Forget that ``template`` is built on ``server`` (it was dropped): the next use looks again."""
    with _templates_lock:
        _templates.pop((server_key(server), template.digest), None)


def forget_templates(names: Iterable[str] | None = None) -> None:
    """Forget the built templates named (all of them by default), as a new process would not know them."""
    with _templates_lock:
        if names is None:
            _templates.clear()
            return
        gone = set(names)
        for key in [k for k, v in _templates.items() if v in gone]:
            del _templates[key]


async def template_database(server: PostgresServer, template: object) -> str:
    """The name of ``template``'s built template database on ``server`` (built first if needed).

    The template never has an open connection: it is closed to connections once built.
    """
    return (await build_template(server, as_template(template))).database


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
    with driver.translate(f"build template {template.name!r} ({name}) on", driver.redacted_dsn(server),
                          failure=TemplateError):
        guard = await rails(server)
        admin = await driver.connect(server)
        try:
            if not await ready(admin, name):
                await admin.execute("SELECT pg_advisory_lock($1, $2)", _LOCK_CLASS, lock)
                try:
                    if not await ready(admin, name):
                        await _build(admin, server, template, name, guard)
                        built = True
                finally:
                    with anyio.CancelScope(shield=True):
                        try:
                            await admin.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_CLASS, lock)
                        except Exception as exc:  # the lock goes with the session, closed just below
                            log.debug("isolated_env: pg_advisory_unlock failed (%r); closing the session", exc)
        finally:
            with anyio.CancelScope(shield=True):
                await driver.close(admin)
    with _templates_lock:
        _templates[key] = name
    return TemplateBuild(name, template.digest, built=built, ms=(time.perf_counter() - started) * 1000)


def _building_name(name: str) -> str:
    """The name a template is built under until it is finished: ``ie_tpb_…`` for ``ie_tpl_…``."""
    return "ie_tpb_" + name.removeprefix("ie_tpl_")


async def _build(admin: Any, server: PostgresServer, template: PostgresTemplate, name: str, using: Rails) -> None:
    """Build ``template`` under a name of its own and rename it into place when finished, so no
    database named ``name`` exists half-built: a clone of it (a warm pool copying while the
    template is dropped and rebuilt) gets the whole template or fails for want of it."""
    asyncpg = driver.module()
    _digest, sources = template._content
    building = _building_name(name)
    # What a builder that died left, under either name (we hold the lock: nobody is building it now).
    await drop(admin, name)
    await drop(admin, building)
    try:
        await create_database(admin, server, building, using.base, grant=using.role, building=template.name)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise no_createdb(server, exc) from exc
    except asyncpg.PostgresError as exc:
        raise TemplateError(f"template {template.name!r}: cannot create its database {building}: {exc}") from exc
    try:
        conn = await driver.connect(using.tests, building)  # what it makes belongs to the tests' role
        try:
            for source, text in sources:
                for number, (line, statement) in enumerate(split_sql(text), 1):
                    try:
                        await conn.execute(statement)
                    except asyncpg.PostgresError as exc:
                        message = _statement_failed(template, source, number, line, statement, exc)
                        raise TemplateError(message) from exc
            if template.setup is not None:
                handle = PostgresHandle(conn, using.tests, building, "template", None)
                try:
                    await template.setup(handle)
                except Exception as exc:
                    fn = getattr(template.setup, "__qualname__", repr(template.setup))
                    raise TemplateError(f"template {template.name!r}: setup {fn}() failed: {exc!r}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await driver.close(conn)
        await _disconnect_all(admin, building)
        label = json.dumps({"template": template.name, "digest": template.digest, "run": run_id(),
                            "built_at": round(time.time()), "built_by": me().as_dict()})
        async with admin.transaction():  # renamed, finished and labelled in one step: complete, or not there
            await admin.execute(f"ALTER DATABASE {quote_ident(building)} RENAME TO {quote_ident(name)}")
            await admin.execute(
                f"ALTER DATABASE {quote_ident(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
            )
            await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(label)}")
    except BaseException:
        # Nothing half-built is left behind, even when the build is cancelled.
        with anyio.CancelScope(shield=True):
            try:
                if admin.is_in_transaction():  # cancelled inside the sealing transaction
                    await admin.execute("ROLLBACK")
                await drop(admin, building)
            except Exception as exc:  # the build's own error matters more; the next builder drops it
                log.debug("isolated_env: could not drop the half-built template %s: %r", building, exc)
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
