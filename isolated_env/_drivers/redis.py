"""redis-py, imported here only: the asyncio client, and our errors for its failures.

:func:`translate` wraps what a resource does on its own behalf (lease a database, flush, release,
reap) so that a failure of the driver or of the server leaves as our error with the cause attached.
It never wraps the test's own commands: a test expects redis-py's exceptions from those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .._errors import IsolatedEnvError, MissingDependencyError, ServiceUnavailable
from .._redact import scrubbed

__all__ = ["asyncio_client", "module", "translate"]


def module() -> Any:
    """``redis.asyncio`` (a core dependency; a broken install is a MissingDependencyError)."""
    try:
        import redis.asyncio as aredis
    except ImportError:  # pragma: no cover - redis is a core dependency
        raise MissingDependencyError("redis", "redis", "isolated_redis()") from None
    return aredis


def asyncio_client(**kwargs: Any) -> Any:
    return module().Redis(**kwargs)


@contextlib.contextmanager
def translate(where: str, *, failure: type[IsolatedEnvError] | None = None) -> Iterator[None]:
    """Turn a redis-py or socket failure into ServiceUnavailable (the server cannot be reached or
    answers with an error), or into ``failure`` (e.g. TeardownError on the way out)."""
    import redis.exceptions as rex

    try:
        yield
    except IsolatedEnvError:
        raise
    except (OSError, TimeoutError, rex.RedisError) as exc:
        problem = f"{where} failed: {type(exc).__name__}: {exc}"
        if failure is not None:
            raise failure(problem) from exc
        fix = "check that the server is running and reachable (isolated-env doctor shows which is used)"
        if isinstance(exc, rex.AuthenticationError):
            fix = "check the user and password in TEST_REDIS_URL / TEST_REDIS_USER / TEST_REDIS_PASSWORD"
        scrubbed(exc)  # a connect's frames hold the password in their locals
        raise ServiceUnavailable("Redis", problem, fix=fix) from exc
