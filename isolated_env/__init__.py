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
    CircuitOpen,
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
from .resources._postgres_database import DatabaseHandle, PostgresTemplate
from .resources.clickhouse import ClickHouseHandle, isolated_clickhouse
from .resources.fs import FileSystemHandle, isolated_fs
from .resources.http import HttpExpectation, HttpHandle, RecordedRequest, isolated_http
from .resources.postgres import PostgresHandle, isolated_postgres
from .resources.redis import RedisHandle, isolated_redis
from .resources.ws import WebSocketHandle, WsExpectation, isolated_ws

__all__ = [
    "PROFILES",
    "UNSET",
    "BudgetExceeded",
    "CircuitOpen",
    "ClickHouseHandle",
    "ConfigError",
    "DatabaseHandle",
    "Environment",
    "EnvironmentStatistics",
    "FileSystemHandle",
    "HttpExpectation",
    "HttpHandle",
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
    "PostgresTemplate",
    "RecordedRequest",
    "RedisHandle",
    "Resource",
    "ResourceCheckFailed",
    "ServiceUnavailable",
    "Settings",
    "TeardownError",
    "TemplateError",
    "UnsafePath",
    "WebSocketHandle",
    "WsExpectation",
    "isolated_clickhouse",
    "isolated_fs",
    "isolated_http",
    "isolated_postgres",
    "isolated_redis",
    "isolated_ws",
    "resolve",
]

__version__ = "0.1.0"
