"""Servers with one database, for prefix mode: a 3-primary Redis Cluster on loopback, and a plain
server started with ``databases 1`` (what many managed Redis offer). Each is stopped by its
fixture; a node process left behind fails the test that started it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from isolated_env._servers._redis_cluster import LocalCluster, start_cluster
from isolated_env._servers.redis import find_binary


def _base() -> Path:
    return Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())


def _leftovers(directory: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(directory) in part for part in proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


def _cluster(replicas: int) -> Iterator[LocalCluster]:
    directory = Path(tempfile.mkdtemp(prefix="ie-cl-", dir=_base())) / "cluster"
    cluster = start_cluster(directory, primaries=3, replicas=replicas, node_timeout_ms=1000)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory.parent, ignore_errors=True)
        assert _leftovers(directory) == [], "cluster nodes outlived their fixture"


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    """A 3-primary cluster shared by a module's tests (none of which changes its topology)."""
    yield from _cluster(replicas=0)


@pytest.fixture
def failover_cluster() -> Iterator[LocalCluster]:
    """A 3-primary cluster with a replica per primary, for one test to kill a primary of."""
    yield from _cluster(replicas=1)


@contextlib.contextmanager
def single_db_server() -> Iterator[str]:
    """A server started with ``databases 1`` on TCP, with a password, until the block ends: its URL."""
    binary, _ = find_binary()
    directory = Path(tempfile.mkdtemp(prefix="ie-1db-", dir=_base()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = directory / "redis.conf"
    conf.write_text("requirepass single-db-secret\n")
    conf.chmod(0o600)
    proc = subprocess.Popen(
        [str(binary), str(conf), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--databases", "1", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.01)
        yield f"redis://:single-db-secret@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def single_db_redis() -> Iterator[str]:
    """A managed single-db Redis (:func:`single_db_server`) shared by a module's tests."""
    with single_db_server() as url:
        yield url


@pytest.fixture
def stoppable_single_db_redis() -> Iterator[tuple[str, Callable[[], None]]]:
    """A single-db server of one test's own, and a function that stops it mid-test."""
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(single_db_server()), stack.close


@pytest.fixture(params=["cluster", "single-db", "embedded"])
def prefix_server(
    request: pytest.FixtureRequest, clean_environ: pytest.MonkeyPatch
) -> Iterator[tuple[str, pytest.MonkeyPatch]]:
    """Where prefix mode runs: a cluster and a single-db server (``TEST_REDIS_URL``; the mode is
    chosen from the server there), and the embedded server (asked for ``mode="prefix"``)."""
    if request.param == "cluster":
        clean_environ.setenv("TEST_REDIS_URL", request.getfixturevalue("redis_cluster").url)
    elif request.param == "single-db":
        clean_environ.setenv("TEST_REDIS_URL", request.getfixturevalue("single_db_redis"))
    yield request.param, clean_environ
