"""isolated_postgres(): a test's private view of PostgreSQL, in one of two modes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..._config import env_flag
from ..._errors import ConfigError
from ..._resource import current_settings, resource
from ..._servers import postgres as servers
from .database import database_mode
from .handle import PostgresHandle
from .templates import as_template, template_database
from .transaction import transaction_mode

__all__ = ["isolated_postgres"]


@resource("postgres")
async def isolated_postgres(
    *, mode: str = "transaction", template: Any = None, keep_on_failure: bool | None = None
) -> AsyncIterator[PostgresHandle]:
    """A private view of PostgreSQL for one test, rolled back (or dropped) on exit.

    ``mode="transaction"`` (default): a pooled connection inside a transaction that is rolled back.
    ``mode="database"``: a private database reachable by ``.dsn`` from any driver and connection,
    cloned from ``template`` (a :class:`PostgresTemplate`); ``keep_on_failure`` keeps it when the
    test fails (default: ``ISOLATED_ENV_KEEP_FAILED``, set by ``--isolated-env-keep-failed``).
    """
    if keep_on_failure is None:
        keep_on_failure = env_flag("ISOLATED_ENV_KEEP_FAILED")
    if mode not in {"transaction", "database"}:
        raise ConfigError(f"isolated_postgres(mode={mode!r}): mode must be 'transaction' or 'database'")
    checked = as_template(template)
    settings = current_settings()
    server = await servers.ensure_server(settings)
    if mode == "database":
        async with database_mode(server, settings, checked, keep_on_failure=keep_on_failure) as handle:
            yield handle
        return
    template_name = None if template is None else await template_database(server, checked)
    async with transaction_mode(server, settings, template_name) as handle:
        yield handle
