"""isolated_postgres(): a test's private view of PostgreSQL.

One idea per module, each importing only those listed before it:

- :mod:`.sql`: quoting, and splitting SQL scripts as psql would;
- :mod:`.labels`: the owner label on every database of ours, and what this process owns;
- :mod:`.roles`: the role tests connect as, and the base every database starts from (guard rails);
- :mod:`.handle`: :class:`PostgresHandle` and :class:`DatabaseHandle` (asyncpg's API, ``.dsn``);
- :mod:`.templates`: :class:`PostgresTemplate`, built once under an advisory lock;
- :mod:`.janitor`: reaping dead owners' databases, keeping a failed test's, :func:`prune`;
- :mod:`.transaction`: transaction mode, ``BEGIN`` … ``ROLLBACK`` with escaped ``COMMIT`` healed;
- :mod:`.warm`: the warm pool, clones made ahead of demand by background tasks;
- :mod:`.database`: database mode, a private clone per test leased from the warm pool;
- :mod:`.factory`: :func:`isolated_postgres`, choosing the mode.

asyncpg itself is imported (lazily) only by :mod:`isolated_env._drivers.asyncpg`.
"""

from __future__ import annotations

from .database import WarmPoolStatistics, database_mode, settle, warm_pool_statistics
from .factory import isolated_postgres
from .handle import DatabaseHandle, PostgresHandle
from .janitor import KeptDatabase, kept_databases, prune
from .sql import split_sql
from .templates import PostgresTemplate, TemplateBuild, build_template, forget_templates, template_database

__all__ = [
    "DatabaseHandle",
    "KeptDatabase",
    "PostgresHandle",
    "PostgresTemplate",
    "TemplateBuild",
    "WarmPoolStatistics",
    "build_template",
    "database_mode",
    "forget_templates",
    "isolated_postgres",
    "kept_databases",
    "prune",
    "settle",
    "split_sql",
    "template_database",
    "warm_pool_statistics",
]
