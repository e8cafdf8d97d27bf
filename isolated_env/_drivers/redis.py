"""redis-py, imported here only: the asyncio client, and our errors for its failures.

:func:`translate` wraps what a resource does on its own behalf (lease a database, flush, release,
reap) so that a failure of the driver or of the server leaves as our error with the cause attached.
It never wraps the test's own commands: a test expects redis-py's exceptions from those.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from .._errors import IsolatedEnvError, MissingDependencyError, ServiceUnavailable
from .._hosts import is_loopback
from .._redact import scrubbed

__all__ = ["asyncio_client", "module", "sync_client", "translate"]


def module() -> Any:
    """``redis.asyncio`` (a core dependency; a broken install is a MissingDependencyError)."""
    try:
        import redis.asyncio as aredis
    except ImportError:  # pragma: no cover - redis is a core dependency
        raise MissingDependencyError("redis", "redis", "isolated_redis()") from None
    return aredis


_driver_info: list[Any] = []


def _client_defaults() -> dict[str, Any]:
    # redis-py >= 7 looks its own version up in the package metadata for every client it makes
    # (about 1.5 ms, more than a test's Redis work, and ~9 ms for the first, which scans every
    # installed distribution): its module's own ``__version__`` is taken once here instead.
    if not _driver_info:
        try:
            from redis.driver_info import DriverInfo
        except ImportError:  # older redis-py: the version is a default argument, computed at import
            _driver_info.append(None)
        else:
            import redis

            version = getattr(redis, "__version__", None)
            _driver_info.append(DriverInfo(lib_version=version) if isinstance(version, str) else DriverInfo())
    info = _driver_info[0]
    return {} if info is None else {"driver_info": info}


def asyncio_client(**kwargs: Any) -> Any:
    """A ``redis.asyncio.Redis``. On a unix socket (the embedded server) or a loopback port, a
    failed command is retried once, at once: redis-py's default retries with backoff (nested in
    the connect and in the command) only delay, by tens of seconds, the error of a server that
    stopped, since a local socket that refuses a connection keeps refusing."""
    local = "unix_socket_path" in kwargs or is_loopback(str(kwargs.get("host", "localhost")))  # redis-py's default host
    if local and "retry" not in kwargs:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs["retry"] = Retry(NoBackoff(), 1)
    return _client_class()(**(_client_defaults() | kwargs))


@functools.cache
def _client_class() -> Any:
    """``redis.asyncio.Redis``; before redis 5.0.1, which named ``aclose()`` ``close()``, a subclass
    that has both, so the rest of the package (and the test) can call ``aclose()`` on any version."""
    cls = module().Redis
    if hasattr(cls, "aclose"):
        return cls

    class Redis(cls):  # type: ignore[misc, valid-type]
        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            await self.close(close_connection_pool)

    Redis.__qualname__ = Redis.__name__ = cls.__name__
    Redis.__module__ = cls.__module__
    return Redis


def sync_client(**kwargs: Any) -> Any:
    """A ``redis.Redis`` (for the threads that keep leases, never for a test's own work)."""
    import redis

    return redis.Redis(**(_client_defaults() | kwargs))


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
