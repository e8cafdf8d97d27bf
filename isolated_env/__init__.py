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
from ._resilience import (
    CircuitBreaker,
    CircuitState,
    ManualClock,
    ResilientClient,
    RetryPolicy,
    resilient_client,
)
from ._resource import Resource
from .resources.postgres import DatabaseHandle, PostgresTemplate
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
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
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
    "ManualClock",
    "MissingDependencyError",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolStatistics",
    "PostgresHandle",
    "PostgresTemplate",
    "RecordedRequest",
    "RedisHandle",
    "ResilientClient",
    "Resource",
    "ResourceCheckFailed",
    "RetryPolicy",
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
    "resilient_client",
    "resolve",
]

__version__ = "0.1.0"
