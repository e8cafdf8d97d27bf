"""isolated_postgres(): a test's private view of PostgreSQL, in one of two modes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..._config import Settings
from ..._contract import Kept, Outcome, current_settings, keeps
from ..._drivers import asyncpg as driver
from ..._errors import ConfigError, IsolatedEnvError, ServerDied
from ..._ownership import Scope
from ..._resource import report_kept, resource
from ..._servers import postgres as servers
from .._died import died, watch
from .database import database_mode, template_for_tests
from .handle import DatabaseHandle, PostgresHandle
from .janitor import prune
from .labels import disown_server, server_key
from .nesting import nested_postgres
from .private import private_database
from .templates import as_template
from .transaction import transaction_mode

__all__ = ["isolated_postgres"]

_NOTHING_KEPT = Kept(
    "postgres",
    "nothing: transaction mode rolls every change back, so a failed test leaves no data to keep",
    "to keep it, use isolated_postgres(mode='database') (a private database the summary then names)",
)


async def _reap(
    settings: Settings, kept: bool, *, templates: bool = False, scope: Scope | None = None, dry_run: bool = False
) -> list[str]:
    return await prune(
        await servers.ensure_server(settings), kept=kept, orphans=True, templates=templates, scope=scope or Scope(),
        dry_run=dry_run,
    )


async def _self_check() -> None:
    async with isolated_postgres() as a, isolated_postgres() as b:
        await a.execute("CREATE TABLE ie_doctor (x int)")
        await a.execute("INSERT INTO ie_doctor VALUES (1)")
        if await b.fetchval("SELECT to_regclass('ie_doctor')") is not None:
            raise IsolatedEnvError("isolation self-check failed: a concurrent test saw another's table")
    async with isolated_postgres() as c:
        if await c.fetchval("SELECT to_regclass('ie_doctor')") is not None:
            raise IsolatedEnvError("isolation self-check failed: a table survived its test")


watch("postgres", server_key, also=disown_server)


async def _died(server: servers.PostgresServer) -> ServerDied | None:
    dead = await died("postgres", server, server_key(server))
    if dead is not None:
        disown_server(server)  # its databases died with it
    return dead


@resource(
    "postgres", aliases=("database",), provider="postgres", extra="postgres", reap=_reap, self_check=_self_check,
    reset=lambda handle: handle._reset(), statistics=lambda handle: handle._pool.statistics(), nest=nested_postgres,
)
async def isolated_postgres(
    *, mode: str = "transaction", template: Any = None, keep_on_failure: bool | None = None, superuser: bool = False
) -> AsyncIterator[PostgresHandle]:
    """A private view of PostgreSQL for one test, rolled back (or dropped) on exit.

    ``mode="transaction"`` (default): a pooled connection inside a transaction that is rolled back.
    ``mode="database"``: a private database reachable by ``.dsn`` from any driver and connection,
    cloned from ``template`` (a :class:`PostgresTemplate`); ``keep_on_failure`` keeps it when the
    test fails (default: ``ISOLATED_ENV_KEEP_FAILED``, set by ``--isolated-env-keep-failed``).

    On the embedded server the test connects as a role that cannot harm other tests (no
    ``DROP DATABASE``, ``ALTER SYSTEM``, ``pg_terminate_backend``, no connection to a template);
    ``superuser=True`` gives a test that needs such commands a server of its own instead, as its
    superuser, started for it and stopped after it (on an external server: the URL's user; see
    docs/postgres.md).
    """
    if mode not in {"transaction", "database"}:
        raise ConfigError(f"isolated_postgres(mode={mode!r}): mode must be 'transaction' or 'database'")
    if not isinstance(superuser, bool):
        raise ConfigError(f"isolated_postgres(superuser={superuser!r}): superuser must be True or False")
    checked = as_template(template)
    settings = current_settings()
    keep = keeps(Outcome.FAILED, keep_on_failure)  # whether a failure would be kept
    if superuser and servers.PROVIDER.find(settings) is None:  # embedded: no external server named
        if keep_on_failure:
            raise ConfigError(
                "isolated_postgres(superuser=True, keep_on_failure=True): the superuser's server is the test's "
                "own, stopped with it, and cannot be kept; drop one of the two"
            )
        async with private_database(settings, None if template is None else checked) as own:
            yield own
        return
    server = await servers.ensure_server(settings)
    outcome: Outcome | None = None
    try:
        if mode == "database":
            handle = None
            try:
                async with database_mode(server, settings, checked, keep_on_failure=keep,
                                         superuser=superuser) as handle:
                    outcome = yield handle
                    if isinstance(handle, DatabaseHandle):
                        handle.failed = outcome is Outcome.FAILED
            finally:
                if isinstance(handle, DatabaseHandle) and handle.kept:
                    report_kept(Kept(
                        "postgres", f"database {handle.database}: {driver.redacted_dsn(server, handle.database)}",
                        (f"password: `cat {server.password_file}`; " if server.password_file else "")
                        + "remove with `isolated-env prune --kept`"
                        + ("; the embedded server stays up until `isolated-env down`" if server.source == "embedded"
                           else ""),
                    ))
        else:
            template_name = None if template is None else await template_for_tests(server, checked)
            async with transaction_mode(server, settings, template_name, superuser=superuser) as handle:
                outcome = yield handle
    except Exception as exc:
        # Asked only on the failing path: a test whose server died gets that, not a driver error.
        dead = await _died(server)
        if dead is not None:
            raise dead from exc
        raise
    if outcome is Outcome.FAILED:
        dead = await _died(server)
        if dead is not None:
            raise dead
        if keep and mode == "transaction":
            report_kept(_NOTHING_KEPT)
