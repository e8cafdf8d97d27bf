"""What synchronous code gets: DSNs, URLs and sync clients for the async handles of the background loop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import MissingDependencyError
from .._redact import redact_url
from ._portal import portal

if TYPE_CHECKING:
    import httpx
    import psycopg
    import redis

    from ..resources.http import HttpExpectation

__all__ = ["ClickHouse", "Fs", "Http", "Postgres", "Redis"]


class Postgres:
    """A private PostgreSQL database (database mode) for synchronous code: ``.dsn`` for any driver
    and any number of connections, ``connect()`` for a psycopg connection. Dropped on exit."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        """The async :class:`~isolated_env.DatabaseHandle` (its methods run on the background loop: :func:`call`)."""
        self.dsn: str = handle.dsn
        self.database: str = handle.database
        self.template: str = handle.template
        self._connections: list[Any] = []

    def __repr__(self) -> str:
        return f"<sync.Postgres database={self.database} dsn={redact_url(self.dsn)}>"

    def url(self, driver: str = "psycopg") -> str:
        """The DSN as an SQLAlchemy URL for ``driver`` (``postgresql+psycopg://…``)."""
        scheme, rest = self.dsn.split("://", 1)
        return f"{scheme}+{driver}://{rest}"

    def django_settings(self) -> dict[str, Any]:
        """An entry for Django's ``DATABASES`` reaching this database:
        ``settings.DATABASES["default"].update(db.django_settings())``."""
        server = self.handle.server
        return {"ENGINE": "django.db.backends.postgresql", "NAME": self.database, "HOST": server.host,
                "PORT": str(server.port), "USER": server.user, "PASSWORD": server.password or ""}

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to the private database (closed on exit if still open)."""
        try:
            import psycopg
        except ImportError:
            raise MissingDependencyError("psycopg", "sync", "sync.isolated_postgres().connect()") from None
        conn = psycopg.connect(self.dsn, **kwargs)
        self._connections.append(conn)
        return conn

    def _close(self) -> None:
        for conn in self._connections:
            conn.close()


class Redis:
    """A private Redis database for synchronous code: every ``redis.Redis`` command on the handle,
    ``.client`` (decoded responses off, as redis-py's default), ``.url`` and ``.db``."""

    def __init__(self, handle: Any) -> None:
        import redis as redis_sync

        self.handle = handle
        self.url: str = handle.url
        self.db: int = handle.db
        self.client: redis.Redis = redis_sync.Redis.from_url(self.url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __repr__(self) -> str:
        return f"<sync.Redis db={self.db} url={redact_url(self.url)}>"

    def _close(self) -> None:
        self.client.close()


class ClickHouse:
    """A private ClickHouse database for synchronous code: every method of clickhouse-connect's
    sync client on the handle (``command``, ``query``, ``insert``), ``.client``, ``.url``, ``.database``."""

    def __init__(self, handle: Any) -> None:
        from .._drivers import clickhouse as ch_driver

        self.handle = handle
        self.url: str = handle.url
        self.database: str = handle.database
        self.prefix: str = handle.prefix
        self.client: Any = ch_driver.module().get_client(**handle.server.client_kwargs(handle.database))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __repr__(self) -> str:
        return f"<sync.ClickHouse database={self.database} url={redact_url(self.url)}>"

    def table(self, name: str) -> str:
        """``name`` with this test's prefix (prefix mode), else ``name`` itself."""
        return f"{self.prefix}{name}"

    def _close(self) -> None:
        self.client.close()


class Http:
    """A live HTTP server answering by expectations, for synchronous code: ``expect(...)`` as on the
    async handle (declare before the request), ``.client`` an ``httpx.Client`` with ``base_url``,
    ``.url``, ``.requests``, ``check()``."""

    def __init__(self, handle: Any) -> None:
        import httpx

        self.handle = handle
        self.url: str = handle.url
        self.client: httpx.Client = httpx.Client(base_url=self.url)

    def __repr__(self) -> str:
        return f"<sync.Http {self.url}>"

    def expect(self, method: str, path: Any, **kwargs: Any) -> HttpExpectation:
        """Expect a request (see :meth:`isolated_env.HttpHandle.expect`); returns the expectation,
        whose ``respond*`` methods say how to answer."""
        result: HttpExpectation = portal().call(lambda: self.handle.expect(method, path, **kwargs))
        return result

    @property
    def requests(self) -> list[Any]:
        return list(self.handle.requests)

    def url_for(self, path: str) -> str:
        return str(self.handle.url_for(path))

    def check(self) -> None:
        """Raise every unmatched request and unmet expectation so far."""
        portal().call(self.handle.check)

    def _close(self) -> None:
        self.client.close()


class Fs:
    """A private directory for synchronous code: ``.path``, ``resolve()`` refusing escapes, and
    reads and writes relative to it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.path: Path = handle.path

    def __repr__(self) -> str:
        return f"<sync.Fs {self.path}>"

    def __fspath__(self) -> str:
        return str(self.path)

    def resolve(self, relative: str | os.PathLike[str]) -> Path:
        return Path(self.handle.resolve(relative))

    def write_text(self, relative: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
        target = self.resolve(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding=encoding)
        return target

    def read_text(self, relative: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        return self.resolve(relative).read_text(encoding=encoding)

    def write_bytes(self, relative: str | os.PathLike[str], data: bytes) -> Path:
        target = self.resolve(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def read_bytes(self, relative: str | os.PathLike[str]) -> bytes:
        return self.resolve(relative).read_bytes()

    def exists(self, relative: str | os.PathLike[str]) -> bool:
        return bool(self.handle.exists(relative))

    def listdir(self) -> list[str]:
        return list(self.handle.listdir())

    def _close(self) -> None:
        pass
