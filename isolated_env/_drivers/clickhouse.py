"""clickhouse-connect, imported here only: its async client, and our errors for its failures.

:func:`translate` wraps what a resource does on its own behalf (create, swap, drop or keep a
database, reap) so that a failure leaves as our error with the cause attached. It never wraps the
test's own queries: a test expects clickhouse-connect's exceptions from those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .._errors import IsolatedEnvError, MissingDependencyError, ServiceUnavailable
from .._redact import scrubbed

__all__ = ["connect", "module", "translate"]


def module() -> Any:
    try:
        import clickhouse_connect
    except ImportError:
        raise MissingDependencyError("clickhouse-connect", "clickhouse", "isolated_clickhouse()") from None
    return clickhouse_connect


async def connect(**kwargs: Any) -> Any:
    return await module().get_async_client(**kwargs)


@contextlib.contextmanager
def translate(where: str, *, failure: type[IsolatedEnvError] | None = None) -> Iterator[None]:
    """Turn a clickhouse-connect or socket failure into ServiceUnavailable, or into ``failure``."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        yield
    except IsolatedEnvError:
        raise
    except (OSError, TimeoutError, ClickHouseError) as exc:
        problem = f"{where} failed: {type(exc).__name__}: {exc}"
        if failure is not None:
            raise failure(problem) from exc
        scrubbed(exc)  # a connect's frames hold the password in their locals
        raise ServiceUnavailable(
            "ClickHouse", problem,
            fix="check that the server is running and reachable (isolated-env doctor shows which is used)",
        ) from exc
