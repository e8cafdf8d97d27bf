"""What several fault tests set up the same way: a state directory of their own, with its embedded
servers on their sockets and on loopback TCP, and a child's environment that uses it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from isolated_env._config import resolve
from isolated_env._servers import clickhouse, postgres, registry
from isolated_env._servers import redis as redis_servers

KINDS = ("postgres", "redis", "clickhouse")


def fresh_state_dir(prefix: str) -> Path:
    """A new state directory: short (a unix socket path is at most 107 bytes), on tmpfs when there
    is one, and world-searchable, as the unprivileged PostgreSQL user must traverse it."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o711)
    return path


class Servers:
    """The embedded servers of one state directory."""

    def __init__(self, state_dir: Path, pg: Any, rs: Any, ch: Any) -> None:
        self.state_dir, self.pg, self.rs, self.ch = state_dir, pg, rs, ch

    def info(self, kind: str) -> dict[str, Any]:
        state = registry.status(kind, self.state_dir)
        assert state is not None
        return state.info


@contextlib.contextmanager
def servers_on_tcp(prefix: str) -> Iterator[Servers]:
    """Embedded PostgreSQL, Redis and ClickHouse adaptor in a state directory of their own, also on
    loopback TCP; stopped, forgotten and removed afterwards."""
    state_dir = fresh_state_dir(prefix)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ISOLATED_ENV_POSTGRES_TCP", "1")
            mp.setenv("ISOLATED_ENV_REDIS_TCP", "1")
            settings = resolve(state_dir=state_dir)
        yield Servers(state_dir, postgres.embedded.join(settings), redis_servers.embedded.join(settings),
                      clickhouse.embedded.join(settings))
    finally:
        for kind in KINDS:
            registry.release(kind, state_dir)
        for provider in (postgres.PROVIDER, redis_servers.PROVIDER, clickhouse.PROVIDER):
            provider.forget()
        shutil.rmtree(state_dir)


def child_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child that uses ``state_dir`` and no external server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_REDIS", "TEST_POSTGRES", "TEST_CLICKHOUSE"))}
    return {**env, "ISOLATED_ENV_STATE_DIR": str(state_dir), **extra}

