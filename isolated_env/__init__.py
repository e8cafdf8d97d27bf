"""Real services, isolated per test, in milliseconds.

    async with isolated_env.Environment() as env:
        db = await env.enter(isolated_env.isolated_postgres())
        r = await env.enter(isolated_env.isolated_redis())
"""

from __future__ import annotations

from ._config import PROFILES, UNSET, Settings, resolve
from ._environment import Environment, EnvironmentStatistics
from ._errors import (
    BudgetExceeded,
    ConfigError,
    IsolatedEnvError,
    IsolationBroken,
    LeaseTimeout,
    MissingDependencyError,
    PoolClosed,
    PoolError,
    ResourceCheckFailed,
    ServiceUnavailable,
    TeardownError,
    TemplateError,
    UnsafePath,
)
from ._metrics import LeakReport
from ._pool import Pool, PoolStatistics
from ._resource import Resource
from .resources.fs import FileSystemHandle, isolated_fs
from .resources.postgres import PostgresHandle, isolated_postgres
from .resources.redis import RedisHandle, isolated_redis

__all__ = [
    "PROFILES",
    "UNSET",
    "BudgetExceeded",
    "ConfigError",
    "Environment",
    "EnvironmentStatistics",
    "FileSystemHandle",
    "IsolatedEnvError",
    "IsolationBroken",
    "LeakReport",
    "LeaseTimeout",
    "MissingDependencyError",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolStatistics",
    "PostgresHandle",
    "RedisHandle",
    "Resource",
    "ResourceCheckFailed",
    "ServiceUnavailable",
    "Settings",
    "TeardownError",
    "TemplateError",
    "UnsafePath",
    "isolated_fs",
    "isolated_postgres",
    "isolated_redis",
    "resolve",
]

__version__ = "0.1.0"
