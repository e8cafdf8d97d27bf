"""Where ClickHouse comes from: an external server named by the environment, or the embedded one.

No modern ClickHouse server binary can be installed on most CI images (Debian ships 18.16, which
current clickhouse-connect cannot talk to), so the embedded default is the real ClickHouse engine
from the ``chdb`` package, served over the ClickHouse HTTP interface by our adaptor process
(:mod:`.chdb`). clickhouse-connect talks to it over HTTP exactly as to a real server.
The adaptor binds loopback only, requires a password generated per server, keeps its data on
tmpfs, and is shared by every process on the machine through :mod:`.registry`.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio

from .._config import ExternalEndpoint, Settings, external_endpoint
from .._errors import MissingDependencyError, ServiceUnavailable
from . import registry
from ._diagnostics import progress
from ._process import wait_ready
from ._provider import Provider, ServerProvider, unreachable
from .chdb.protocol import user_password

__all__ = ["PROVIDER", "ClickHouseProvider", "ClickHouseServer", "embedded", "ensure_server", "external", "forget"]

KIND = "clickhouse"
# Checking an external server: the driver's own timeouts first, then a bound on the whole check,
# so a server that accepts and never answers fails in seconds, not a driver's default minute.
_CONNECT_TIMEOUT = 3.0
_CHECK_TIMEOUT = 4.0

_FIX = (
    "install the embedded engine with pip install 'isolated-env[clickhouse]' (chdb and clickhouse-connect), "
    "or point TEST_CLICKHOUSE_URL (e.g. http://default:secret@localhost:8123) at a running ClickHouse server"
)


@dataclasses.dataclass(frozen=True)
class ClickHouseServer:
    """A reachable ClickHouse HTTP endpoint and how to connect to it."""

    source: str  # "external" or "embedded"
    engine: str  # "chdb <version> via the isolated_env adaptor" or "clickhouse-server"
    version: str
    host: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    secure: bool = False
    database: str = "default"
    startup_ms: float = 0.0
    reused: bool = False
    pid: int | None = None  # the adaptor process (embedded only)
    guarded: bool = False  # the adaptor knows lease users (each test reaches its own database only)

    @property
    def url(self) -> str:
        """The server's base URL, without credentials."""
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def dsn(self, database: str | None = None) -> str:
        """A URL with credentials and database that ``clickhouse_connect.get_client(dsn=...)`` accepts."""
        scheme = "https" if self.secure else "http"
        auth = quote(self.username, safe="") + (":" + quote(self.password, safe="") if self.password else "")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{quote(database or self.database, safe='')}"

    def client_kwargs(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``clickhouse_connect.get_client``/``get_async_client``."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "secure": self.secure,
            "interface": "https" if self.secure else "http",
            "database": database or self.database,
        }

    def lease_kwargs(self, user: str, database: str) -> dict[str, Any]:
        """:meth:`client_kwargs` for a test's client: as lease user ``user`` on a guarded server
        (it reaches only its own database, see :mod:`.chdb.guard`), else as the admin user."""
        kwargs = self.client_kwargs(database)
        if self.guarded:
            kwargs.update(username=user, password=user_password(self.password, user))
        return kwargs

    def lease_dsn(self, user: str, database: str) -> str:
        """:meth:`dsn` for a test: as lease user ``user`` on a guarded server."""
        if not self.guarded:
            return self.dsn(database)
        return dataclasses.replace(self, username=user, password=user_password(self.password, user)).dsn(database)

    def describe(self) -> str:
        """One line for ``isolated-env doctor``."""
        where = f"{self.url} ({self.engine} {self.version})"
        if self.source == "embedded":
            how = "reused" if self.reused else f"started in {self.startup_ms:.0f} ms"
            return f"embedded: {where}, {how}"
        return f"external: {where}"


def _chdb_version() -> str | None:
    if importlib.util.find_spec("chdb") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chdb")
    except PackageNotFoundError:
        return "?"


def _probe(port: int, password: str, out: dict[str, str]) -> bool:
    """A real query over HTTP, authenticated like a client: ``SELECT version()``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        token = base64.b64encode(f"default:{password}".encode()).decode()
        conn.request("POST", "/", body=b"SELECT version()", headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return False
        out["version"] = body.decode().strip()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _start(server_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    chdb_version = _chdb_version()
    if chdb_version is None:
        raise ServiceUnavailable(
            "ClickHouse",
            "no ClickHouse server is configured and the embedded engine (chdb) is not installed",
            tried=["the chdb package (missing)"],
            fix=_FIX,
        )
    password = secrets.token_urlsafe(24)
    password_file = server_dir / "password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password)
    # The parent binds the socket (loopback only, port from the OS) and the adaptor inherits it:
    # the port is known before the child starts and no other process can take it in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        log = server_dir / "adaptor.log"
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [
            sys.executable, "-m", "isolated_env._servers.chdb",
            "--path", str(server_dir / "data"), "--fd", str(sock.fileno()),
            "--password-file", str(password_file),
        ]
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=str(server_dir),
                pass_fds=(sock.fileno(),), env=env, start_new_session=True,
            )
    finally:
        sock.close()
    found: dict[str, str] = {}
    with progress(KIND, f"ClickHouse (chdb {chdb_version})"):
        wait_ready("ClickHouse", proc, lambda: _probe(port, password, found), log)
    return proc, {
        "host": "127.0.0.1",
        "port": port,
        "user": "default",
        "password_file": str(password_file),
        "version": found.get("version", "?"),
        "engine": f"chdb {chdb_version} via the isolated_env adaptor",
        "guard": True,
        "binary": f"{sys.executable} -m isolated_env._servers.chdb",
        "log": str(log),
    }


def _view(state: registry.ServerState) -> ClickHouseServer:
    info = state.info
    try:
        password = Path(info["password_file"]).read_text().strip()
    except OSError as exc:
        raise ServiceUnavailable(
            "ClickHouse",
            f"the embedded server's password file cannot be read ({exc})",
            fix="stop the server (isolated-env down) so the next run starts a fresh one, or check "
            "that ISOLATED_ENV_STATE_DIR belongs to this user",
        ) from None
    return ClickHouseServer(
        source="embedded",
        engine=info["engine"],
        version=info["version"],
        host=info["host"],
        port=info["port"],
        username=info["user"],
        password=password,
        startup_ms=state.startup_ms,
        reused=state.reused,
        pid=state.pid,
        guarded=bool(info.get("guard")),
    )


def _external_server(endpoint: ExternalEndpoint) -> ClickHouseServer:
    secure = endpoint.scheme == "https"
    return ClickHouseServer(
        source="external",
        engine="clickhouse-server",
        version="?",
        host=endpoint.host,
        port=endpoint.port or (8443 if secure else 8123),
        username=endpoint.user or "default",
        password=endpoint.password or "",
        secure=secure,
        database=endpoint.database or endpoint.params.get("database") or "default",
    )


class ClickHouseProvider(Provider[ClickHouseServer]):
    """ClickHouse: ``TEST_CLICKHOUSE_*``, or the chdb engine behind our HTTP adaptor."""

    kind = KIND
    display = "ClickHouse"
    fix = _FIX

    def find(self, settings: Settings) -> ExternalEndpoint | None:
        return external()

    async def connect_external(self, endpoint: ExternalEndpoint, settings: Settings) -> ClickHouseServer:
        try:
            import clickhouse_connect
            from clickhouse_connect.driver.exceptions import ClickHouseError
        except ImportError:
            raise MissingDependencyError("clickhouse-connect", "clickhouse", "isolated_clickhouse()") from None
        server = _external_server(endpoint)
        try:
            with anyio.fail_after(_CHECK_TIMEOUT):
                client = await clickhouse_connect.get_async_client(
                    **server.client_kwargs(), connect_timeout=_CONNECT_TIMEOUT, send_receive_timeout=_CONNECT_TIMEOUT
                )
                try:
                    version = str(await client.command("SELECT version()"))
                finally:
                    await client.close()
        except (TimeoutError, ClickHouseError, OSError) as exc:
            raise unreachable(
                self.display, endpoint, exc, timeout=_CHECK_TIMEOUT, engine="the embedded engine (chdb)"
            ) from exc
        return dataclasses.replace(server, version=version)

    def start(self, settings: Settings, directory: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        return _start(directory)

    def view(self, state: registry.ServerState) -> ClickHouseServer:
        return _view(state)


def external() -> ExternalEndpoint | None:
    """The external server named by ``TEST_CLICKHOUSE_URL`` or ``TEST_CLICKHOUSE_HOST``, if any."""
    return external_endpoint("clickhouse", schemes=("http", "https"), port_var="HTTP_PORT", example="http://localhost:8123")


PROVIDER = ClickHouseProvider()
embedded = PROVIDER.embedded
if TYPE_CHECKING:
    _meets_the_contract: ServerProvider[ClickHouseServer] = PROVIDER


async def ensure_server(settings: Settings) -> ClickHouseServer:
    """The server this process uses: external if the environment names one, else the embedded engine.

    Raises :class:`ServiceUnavailable` (what was tried and the fix) when neither can be had.
    """
    return await PROVIDER.ensure(settings)


def forget() -> None:
    """Drop this process's cached view (after the registry released the server)."""
    PROVIDER.forget()
