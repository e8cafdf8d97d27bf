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
    from ._config import (
        PROFILES as PROFILES,
    )
    from ._config import (
        UNSET as UNSET,
    )
    from ._config import (
        Settings as Settings,
    )
    from ._config import (
        resolve as resolve,
    )
    from ._contract import (
        Kept as Kept,
    )
    from ._contract import (
        Outcome as Outcome,
    )
    from ._contract import (
        PooledResource as PooledResource,
    )
    from ._contract import (
        Resource as Resource,
    )
    from ._contract import (
        current_settings as current_settings,
    )
    from ._contract import (
        keeps as keeps,
    )
    from ._environment import (
        Environment as Environment,
    )
    from ._environment import (
        EnvironmentStatistics as EnvironmentStatistics,
    )
    from ._errors import (
        BudgetExceeded as BudgetExceeded,
    )
    from ._errors import (
        CircuitOpen as CircuitOpen,
    )
    from ._errors import (
        ConfigError as ConfigError,
    )
    from ._errors import (
        IsolatedEnvError as IsolatedEnvError,
    )
    from ._errors import (
        IsolationBroken as IsolationBroken,
    )
    from ._errors import (
        LeaseTimeout as LeaseTimeout,
    )
    from ._errors import (
        MissingDependencyError as MissingDependencyError,
    )
    from ._errors import (
        NestingUnsupported as NestingUnsupported,
    )
    from ._errors import (
        PoolClosed as PoolClosed,
    )
    from ._errors import (
        PoolError as PoolError,
    )
    from ._errors import (
        ResourceCheckFailed as ResourceCheckFailed,
    )
    from ._errors import (
        SecretInCassette as SecretInCassette,
    )
    from ._errors import (
        ServerDied as ServerDied,
    )
    from ._errors import (
        ServiceUnavailable as ServiceUnavailable,
    )
    from ._errors import (
        TeardownError as TeardownError,
    )
    from ._errors import (
        TemplateError as TemplateError,
    )
    from ._errors import (
        UnpricedModel as UnpricedModel,
    )
    from ._errors import (
        UnsafePath as UnsafePath,
    )
    from ._metrics import (
        LeakReport as LeakReport,
    )
    from ._pool import (
        Pool as Pool,
    )
    from ._pool import (
        PoolStatistics as PoolStatistics,
    )
    from ._pytest_scopes import (
        environment_fixture as environment_fixture,
    )
    from ._resource import (
        ResourceContext as ResourceContext,
    )
    from ._resource import (
        report_kept as report_kept,
    )
    from ._resource import (
        resource as resource,
    )
    from .resources.clickhouse import (
        ClickHouseHandle as ClickHouseHandle,
    )
    from .resources.clickhouse import (
        isolated_clickhouse as isolated_clickhouse,
    )
    from .resources.fs import (
        FileSystemHandle as FileSystemHandle,
    )
    from .resources.fs import (
        isolated_fs as isolated_fs,
    )
    from .resources.http import (
        HttpExpectation as HttpExpectation,
    )
    from .resources.http import (
        HttpHandle as HttpHandle,
    )
    from .resources.http import (
        RecordedRequest as RecordedRequest,
    )
    from .resources.http import (
        isolated_http as isolated_http,
    )
    from .resources.llm import (
        LlmBudget as LlmBudget,
    )
    from .resources.llm import (
        LlmHandle as LlmHandle,
    )
    from .resources.llm import (
        LlmRequest as LlmRequest,
    )
    from .resources.llm import (
        LlmUsage as LlmUsage,
    )
    from .resources.llm import (
        Price as Price,
    )
    from .resources.llm import (
        RateLimit as RateLimit,
    )
    from .resources.llm import (
        isolated_llm as isolated_llm,
    )
    from .resources.postgres import (
        DatabaseHandle as DatabaseHandle,
    )
    from .resources.postgres import (
        PostgresHandle as PostgresHandle,
    )
    from .resources.postgres import (
        PostgresTemplate as PostgresTemplate,
    )
    from .resources.postgres import (
        isolated_postgres as isolated_postgres,
    )
    from .resources.redis import (
        RedisHandle as RedisHandle,
    )
    from .resources.redis import (
        isolated_redis as isolated_redis,
    )
    from .resources.ws import (
        WebSocketHandle as WebSocketHandle,
    )
    from .resources.ws import (
        WsExpectation as WsExpectation,
    )
    from .resources.ws import (
        isolated_ws as isolated_ws,
    )

_ERRORS = (
    "BudgetExceeded CircuitOpen ConfigError IsolatedEnvError IsolationBroken LeaseTimeout MissingDependencyError "
    "NestingUnsupported PoolClosed PoolError ResourceCheckFailed SecretInCassette ServerDied ServiceUnavailable "
    "TeardownError TemplateError UnpricedModel UnsafePath"
).split()

_WHERE: dict[str, str] = {
    **{name: "._config" for name in ("PROFILES", "UNSET", "Settings", "resolve")},
    **{name: "._contract" for name in ("Kept", "Outcome", "PooledResource", "Resource", "current_settings", "keeps")},
    **{name: "._resource" for name in ("ResourceContext", "report_kept", "resource")},
    **{name: "._environment" for name in ("Environment", "EnvironmentStatistics")},
    **{name: "._errors" for name in _ERRORS},
    "LeakReport": "._metrics",
    "environment_fixture": "._pytest_scopes",
    "Pool": "._pool",
    "PoolStatistics": "._pool",
    "DatabaseHandle": ".resources.postgres",
    "PostgresTemplate": ".resources.postgres",
    "ClickHouseHandle": ".resources.clickhouse",
    "isolated_clickhouse": ".resources.clickhouse",
    "FileSystemHandle": ".resources.fs",
    "isolated_fs": ".resources.fs",
    **{name: ".resources.http" for name in ("HttpExpectation", "HttpHandle", "RecordedRequest", "isolated_http")},
    **{
        name: ".resources.llm"
        for name in ("LlmBudget", "LlmHandle", "LlmRequest", "LlmUsage", "Price", "RateLimit", "isolated_llm")
    },
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
