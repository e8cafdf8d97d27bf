"""Sync pytest fixtures, for plain ``def test_…`` and code that opens its own connections.

``isolated_database_dsn``: the DSN of a private PostgreSQL database (database mode), cloned from
``isolated_database_template`` (override that fixture to return your
:class:`~isolated_env.PostgresTemplate`; the default is an empty database).
``isolated_redis_url``: the URL of a private Redis database.

They run the async resources on the background loop of :mod:`isolated_env.sync`, which is closed
at session end (before the servers are left and leaks are counted), taking its pools with it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ._errors import ServiceUnavailable
from .pytest_plugin import _state, failed, unavailable

__all__ = ["isolated_database_dsn", "isolated_database_template", "isolated_redis_url"]

@contextlib.contextmanager
def _held(request: pytest.FixtureRequest, cm: Any) -> Iterator[Any]:
    """Enter the sync context ``cm`` for one test: skip (or fail under CI) when its service is
    unavailable; release it as failed when the test failed, so keep-on-failure keeps its data."""
    problem: ServiceUnavailable | None = None
    try:
        handle = cm.__enter__()
    except ServiceUnavailable as exc:
        problem = exc
    if problem is not None:
        unavailable(problem)  # outside the except block: the skip/fail should not chain the driver error
    try:
        yield handle
    finally:
        if failed(request):
            from ._contract import Outcome

            cm.outcome = Outcome.FAILED
        cm.__exit__(None, None, None)
        if cm.kept is not None:
            _state(request.config).kept.append(f"{request.node.nodeid}: {cm.kept}")


@pytest.fixture
def isolated_database_template() -> Any:
    """The template ``isolated_database_dsn`` clones: None (an empty database) unless overridden,
    e.g. ``return PostgresTemplate(files=["schema.sql"])`` or ``PostgresTemplate.from_alembic(...)``."""
    return None


@pytest.fixture
def isolated_database_dsn(request: pytest.FixtureRequest, isolated_database_template: Any) -> Iterator[str]:
    """The DSN of a private PostgreSQL database (database mode) for this test: open any number of
    connections with any driver; commits are fine, the database is dropped afterwards."""
    from . import sync

    with _held(request, sync.isolated_postgres(template=isolated_database_template)) as db:
        yield db.dsn


@pytest.fixture
def isolated_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a private Redis database for this test (``redis.Redis.from_url(url)``), flushed afterwards."""
    from . import sync

    with _held(request, sync.isolated_redis()) as r:
        yield r.url


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Before the plugin counts leaks and leaves the servers: the background loop's pools close first.
    running = sys.modules.get("isolated_env.sync._portal")
    if running is not None:
        running.close()
    background = sys.modules.get("isolated_env._background")
    if background is not None:  # the warm pools' loop: its clones' spares and drops are settled
        background.close()
    sessions = sys.modules.get("isolated_env._drivers.asyncpg_sessions")
    if sessions is not None:  # PostgreSQL sessions parked between event loops end with the run
        sessions.close_all()
    redis = sys.modules.get("isolated_env.resources.redis")
    if redis is not None:  # and the Redis test connections' sockets
        redis.close_parked()
