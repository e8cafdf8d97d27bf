from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Child pytest runs (pytester's, the docs', migrate's, the fleet's) skip LangSmith's plugin, which
# langchain installs here: no test needs it, and it costs each child about 1.4 s of CPU.
os.environ["PYTEST_ADDOPTS"] = " ".join(filter(None, [os.environ.get("PYTEST_ADDOPTS"), "-p no:langsmith_plugin"]))

# Endpoint variables of the developer's shell must not leak into tests that set their own.
_ENDPOINT_VARS = [name for name in os.environ if name.startswith("TEST_") and name.split("_")[1] in
                  {"POSTGRES", "REDIS", "CLICKHOUSE"}]


@pytest.fixture
def anyio_backend() -> str:
    """Every anyio test runs on asyncio (trio is installed for the tests that ask for it by
    parametrizing ``anyio_backend``), as a project on anyio's default backend list would do."""
    return "asyncio"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every TEST_* endpoint and ISOLATED_ENV_* setting removed, but the state
    directory: a run given one of its own keeps to it (and to its servers) throughout."""
    for name in list(os.environ):
        if name == "ISOLATED_ENV_STATE_DIR":
            continue
        if name.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE", "ISOLATED_ENV_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("CI", raising=False)
    return monkeypatch


@pytest.fixture
def private_state_dir() -> Iterator[Path]:
    """A state directory of its own, for a child process whose embedded servers nobody else may
    join (one that pins a server, keeps databases, or dirties what it leases on purpose).

    Afterwards its servers are stopped and it is removed; a server that is still in use then is a
    leak, and fails the test instead of being removed from under its user.
    """
    # short (a unix socket path is at most 107 bytes) and world-searchable: the unprivileged
    # PostgreSQL user must traverse it
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="ie-test-", dir=base))
    path.chmod(0o711)
    try:
        yield path
    finally:
        if any(path.glob("*.json")):  # a server's state file: something was started here
            _stop_servers(path)
        shutil.rmtree(path)


def _stop_servers(state_dir: Path) -> None:
    down = subprocess.run([sys.executable, "-m", "isolated_env.cli", "down"], capture_output=True, text=True,
                          env={**os.environ, "ISOLATED_ENV_STATE_DIR": str(state_dir)}, timeout=120)
    if down.returncode != 0 or "unpinned" in down.stdout:
        raise AssertionError(f"embedded servers in {state_dir} are still in use: {down.stdout}{down.stderr}")


_SERVER_URLS = """
import json, anyio
from isolated_env._config import resolve
from isolated_env._servers import postgres, redis
async def main():
    settings = resolve()
    pg, r = await postgres.ensure_server(settings), await redis.ensure_server(settings)
    print(json.dumps({"TEST_POSTGRES_URL": pg.dsn("postgres"), "TEST_REDIS_URL": r.url(0)}))
anyio.run(main)
"""


@pytest.fixture(scope="module")
def shared_servers() -> Iterator[dict[str, str]]:
    """A PostgreSQL and a Redis of their own (also on TCP), kept up by `isolated-env up` in a state
    directory of their own: to the tests, external servers (the TEST_*_URL values), shared with no
    other test module, so what a test makes there (templates, work databases) reaches no other."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="ie-ext-", dir=base))
    path.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_POSTGRES", "TEST_REDIS", "TEST_CLICKHOUSE"))}
    env.update(ISOLATED_ENV_STATE_DIR=str(path), ISOLATED_ENV_POSTGRES_TCP="1", ISOLATED_ENV_REDIS_TCP="1")
    try:
        subprocess.run([sys.executable, "-m", "isolated_env.cli", "up", "postgres", "redis"], env=env, check=True,
                       capture_output=True, timeout=180)
        found = subprocess.run([sys.executable, "-c", _SERVER_URLS], env=env, check=True, capture_output=True,
                               text=True, timeout=120)
        yield json.loads(found.stdout.strip().splitlines()[-1])
    finally:
        _stop_servers(path)
        shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis-protocol server of the test's own (the binary the embedded one uses) on loopback TCP,
    with the stock 16 databases and no password, as a managed or shared one: its URL and process (a
    test may stop it; it is stopped after the test anyway)."""
    from isolated_env._servers.redis import find_binary

    binary, _ = find_binary()
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--databases", "16", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait()
