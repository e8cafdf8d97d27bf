"""Fixtures shared by the resource tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import isolated_env as ie
from isolated_env._config import resolve

CLICKHOUSE_LEASE_TTL = 3.0  # seconds: short, so a test sees a lease renewed and one end


@pytest.fixture
async def external_clickhouse(
    clean_environ: pytest.MonkeyPatch, private_state_dir: Path
) -> AsyncIterator[tuple[Any, Any]]:
    """An embedded ClickHouse of this test's own, named by TEST_CLICKHOUSE_URL (so: external, its
    databases leased) with a short lease TTL, and an admin client of it. Its own, because the ended
    leases these tests make are fair game for another xdist worker's reaper."""
    from isolated_env._runtime import current_runtime
    from isolated_env._servers import clickhouse as ch_servers
    from isolated_env._servers import registry
    from isolated_env.resources import _clickhouse_slots as slots

    clean_environ.setenv("ISOLATED_ENV_STATE_DIR", str(private_state_dir))
    try:
        embedded = await ch_servers.ensure_server(resolve())
        clean_environ.setenv("TEST_CLICKHOUSE_URL", embedded.dsn())
        clean_environ.setenv("ISOLATED_ENV_LEASE_TTL", str(CLICKHOUSE_LEASE_TTL))
        for attempt in range(3):  # the embedded engine can take longer than the 4 s check on a loaded machine
            try:
                server = await ch_servers.ensure_server(resolve())
                break
            except ie.ServiceUnavailable:
                if attempt == 2:
                    raise
        assert server.source == "external"
        admin = await slots.connect(server, server.database)
        try:
            yield server, admin
        finally:
            await admin.close()
            # The server stops below: this loop (the session's) must not keep making spares on
            # it, or a later test's settle() reports their failures as its own.
            await (await current_runtime()).drop(server.url)
    finally:
        registry.release("clickhouse", private_state_dir)
