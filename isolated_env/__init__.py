"""Real services, isolated per test, in milliseconds.

    async with isolated_env.Environment() as env:
        db = await env.enter(isolated_env.isolated_postgres())
        r = await env.enter(isolated_env.isolated_redis())

Every public name is imported on first use (PEP 562), so ``import isolated_env`` pulls in no
driver: a resource's driver loads when that resource is first used.
"""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from ._config import PROFILES, UNSET, Settings, resolve
    from ._contract import Kept, Outcome, PooledResource, Resource
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
    from ._resource import ResourceContext
    from .resources.clickhouse import ClickHouseHandle, isolated_clickhouse
    from .resources.fs import FileSystemHandle, isolated_fs
    from .resources.http import HttpExpectation, HttpHandle, RecordedRequest, isolated_http
    from .resources.postgres import DatabaseHandle, PostgresHandle, PostgresTemplate, isolated_postgres
    from .resources.redis import RedisHandle, isolated_redis
    from .resources.ws import WebSocketHandle, WsExpectation, isolated_ws

_ERRORS = (
    "BudgetExceeded CircuitOpen ConfigError IsolatedEnvError IsolationBroken LeaseTimeout MissingDependencyError "
    "PoolClosed PoolError ResourceCheckFailed ServiceUnavailable TeardownError TemplateError UnsafePath"
).split()

_WHERE: dict[str, str] = {
    **{name: "._config" for name in ("PROFILES", "UNSET", "Settings", "resolve")},
    **{name: "._contract" for name in ("Kept", "Outcome", "PooledResource", "Resource")},
    "ResourceContext": "._resource",
    **{name: "._environment" for name in ("Environment", "EnvironmentStatistics")},
    **{name: "._errors" for name in _ERRORS},
    "LeakReport": "._metrics",
    "Pool": "._pool",
    "PoolStatistics": "._pool",
    "DatabaseHandle": ".resources.postgres",
    "PostgresTemplate": ".resources.postgres",
    "ClickHouseHandle": ".resources.clickhouse",
    "isolated_clickhouse": ".resources.clickhouse",
    "FileSystemHandle": ".resources.fs",
    "isolated_fs": ".resources.fs",
    **{name: ".resources.http" for name in ("HttpExpectation", "HttpHandle", "RecordedRequest", "isolated_http")},
    "PostgresHandle": ".resources.postgres",
    "isolated_postgres": ".resources.postgres",
    "RedisHandle": ".resources.redis",
    "isolated_redis": ".resources.redis",
    **{name: ".resources.ws" for name in ("WebSocketHandle", "WsExpectation", "isolated_ws")},
}

__all__ = sorted(_WHERE)

__version__ = "0.1.0"


def __getattr__(name: str) -> typing.Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'isolated_env' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
