"""The report's composite and service environments, as ready fixtures built from
:func:`environment_fixture`.

Each is function-scoped (a fresh environment per test) and holds the services that kind of code
talks to; a project's own environment is one line of the same shape in its conftest (see
docs/scopes.md), e.g. with its template and seed data, class-scoped.
Kinds are named, not imported, so loading the plugin imports no driver.
"""

from __future__ import annotations

from ._pytest_scopes import environment_fixture

__all__ = [
    "analytics_environment", "auth_environment", "backend_environment", "comprehensive_test_environment",
    "websocket_integration_environment",
]

websocket_integration_environment = environment_fixture(websocket="ws")
"""An environment with a WebSocket server and client: ``env['websocket']``."""

comprehensive_test_environment = environment_fixture(
    database="postgres", redis="redis", websocket="ws", http="http", fs="fs"
)
"""PostgreSQL, Redis, WebSocket, HTTP and a directory together: ``env['database']``, ``['redis']``,
``['websocket']``, ``['http']``, ``['fs']``."""

auth_environment = environment_fixture(database="postgres", redis="redis")
"""Auth services: ``env['database']`` (users, sessions) and ``env['redis']`` (tokens, rate limits)."""

analytics_environment = environment_fixture(clickhouse="clickhouse", database="postgres", redis="redis")
"""Analytics: ``env['clickhouse']`` (events), ``env['database']`` and ``env['redis']`` (caches)."""

backend_environment = environment_fixture(database="postgres", redis="redis", http="http", fs="fs")
"""A backend service: ``env['database']``, ``env['redis']``, ``env['http']`` (its upstream APIs) and ``env['fs']``."""
