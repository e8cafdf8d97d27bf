"""RAM on tmpfs is given back: a SIGKILLed PostgreSQL leaves no dynamic shared memory segment in
``/dev/shm`` (they live in its data directory, which goes with it), and every state directory of
the machine copies one initdb'd cluster cache, of bounded size, instead of keeping its own."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from isolated_env._config import resolve
from isolated_env._servers import _pg_cluster, postgres, registry


def _state_dir() -> Path:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="ie-shm-", dir=base))
    path.chmod(0o711)
    return path


@pytest.fixture
def two_state_dirs() -> Iterator[tuple[Path, Path]]:
    dirs = (_state_dir(), _state_dir())
    try:
        yield dirs
    finally:
        for d in dirs:
            registry.release("postgres", d)
            shutil.rmtree(d)
        postgres.PROVIDER.forget()


def _mapped_files(pid: int) -> set[str]:
    try:
        return {m.path for m in psutil.Process(pid).memory_maps(grouped=True)}
    except psutil.Error:
        return set()


def test_a_killed_server_leaves_no_shared_memory_in_dev_shm(two_state_dirs: tuple[Path, Path]) -> None:
    state_dir = two_state_dirs[0]
    server = postgres.embedded.join(resolve(state_dir=state_dir))
    state = registry.status("postgres", state_dir)
    assert state is not None
    data = Path(server.host) / "data"
    processes = [psutil.Process(state.pid), *psutil.Process(state.pid).children()]
    mapped = set().union(*(_mapped_files(p.pid) for p in processes))
    # The segments exist, in the data directory, and none in /dev/shm ...
    assert any(path.startswith(str(data / "pg_dynshmem") + "/mmap.") for path in mapped), sorted(mapped)
    assert not [path for path in mapped if path.startswith("/dev/shm/PostgreSQL.")]
    os.kill(state.pid, signal.SIGKILL)
    psutil.wait_procs(processes, timeout=10)
    # ... so the killed server's went with its directory, which the next look at the state removes.
    registry.release("postgres", state_dir)
    assert not data.exists()
    assert not list(state_dir.glob("postgres-*"))


def test_state_directories_share_one_bounded_cluster_cache(two_state_dirs: tuple[Path, Path]) -> None:
    views = [postgres.embedded.join(resolve(state_dir=d)) for d in two_state_dirs]
    assert views[0].host != views[1].host  # two servers ...
    settings = resolve(state_dir=two_state_dirs[0])
    # ... copied from the one cache entry of the machine for this binary (other tests may make
    # entries of their own binaries meanwhile), and none kept per state directory
    bindir, _ = postgres.find_bindir(settings.postgres_bindir)
    entry = _pg_cluster._entry(_pg_cluster.cache_root(settings), bindir, views[0].version)
    assert (entry / ".complete").exists(), sorted(p.name for p in entry.parent.iterdir())
    for d in two_state_dirs:
        assert not (d / "pgcache").exists()


def test_the_cache_keeps_only_the_newest_builds(tmp_path: Path) -> None:
    for i in range(_pg_cluster.KEEP + 3):
        build = tmp_path / f"pg9.{i}-{i:010d}"
        build.mkdir()
        (build / ".complete").touch()
        os.utime(build / ".complete", (time.time() - 100 + i, time.time() - 100 + i))
    newest = tmp_path / f"pg9.{_pg_cluster.KEEP + 2}-{_pg_cluster.KEEP + 2:010d}"
    _pg_cluster._evict(tmp_path, keep=newest)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == _pg_cluster.KEEP
    assert left[-1] == newest.name and f"pg9.{_pg_cluster.KEEP + 1}-{_pg_cluster.KEEP + 1:010d}" in left
