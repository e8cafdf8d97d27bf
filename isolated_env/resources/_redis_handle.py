"""The handles of isolated_redis(): a database of the test's own, or a key prefix of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._redact import redact_url
from .._servers.redis import RedisServer

__all__ = ["RedisHandle", "RedisPrefixHandle"]

if TYPE_CHECKING:
    # Type checkers see every Redis command on the handle; at run time the handle is a plain
    # object passing them to ``.client`` (``isinstance(handle, Redis)`` is False).
    from redis.asyncio import Redis
    from redis.asyncio import Redis as _Commands
else:
    _Commands = object


class RedisHandle(_Commands):
    """Every ``redis.asyncio.Redis`` command on the test's own logical database.

    ``.client`` is the Redis client, ``.db`` its database number, ``.url`` reaches the same database
    from another client or process. ``.host`` and ``.port`` are for code that dials TCP: None on a
    unix socket only (the embedded server, unless ``ISOLATED_ENV_REDIS_TCP=1``); ``.password`` goes
    with them (the embedded server's is generated per server). ``repr()`` shows no password.
    """

    def __init__(self, slot: Any) -> None:  # a database's lease (``redis._Slot``)
        # The handle's ``.client`` is the client itself, in place of ``Redis.client()``.
        self.client: Redis = slot.client  # type: ignore[assignment]
        self.db: int = slot.db
        self.server: RedisServer = slot.server
        self.url: str = slot.url
        self.host: str | None = slot.server.host
        self.port: int | None = slot.server.port
        self.password: str | None = slot.server.password  # with host and port: ``.url`` carries it too

    prefix: str = ""  # what the test's keys and channels start with: "{ie:<n>}:" in prefix mode

    def key(self, name: str) -> str:
        """``name`` in the test's namespace: as is in a database of its own, prefixed in prefix mode."""
        return self.prefix + name

    if not TYPE_CHECKING:  # hidden from type checkers, or a typo would type-check as Any

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

    def __repr__(self) -> str:
        return f"<RedisHandle db={self.db} url={redact_url(self.url)}>"


class RedisPrefixHandle(RedisHandle):
    """The test's namespace on a server with one database (a cluster, a managed Redis): every
    ``redis.asyncio.Redis`` command (``RedisCluster``'s on a cluster) as an ACL user that may touch
    only the keys and channels named ``handle.key(name)``, i.e. ``handle.prefix + name``.

    ``.url`` logs in as that user (``.username``, ``.password``); ``.db`` is 0; ``.server.cluster``
    says whether the client is a ``RedisCluster``.

    ACL key patterns do not filter ``SCAN`` (``KEYS`` is refused): the handle's ``scan`` and
    ``scan_iter`` stay in the prefix, a ``match`` that does not start with it being put under it
    (none: ``prefix*``); ``.client.scan()`` without a ``MATCH`` lists other tests' key names.
    """

    def __init__(self, item: Any) -> None:  # a prefix's lease (``_redis_prefixes._Prefix``)
        self.client = item.client
        self.db = 0
        self.server = item.server
        self.url = item.url
        self.host, self.port = item.server.host, item.server.port
        self.username: str | None = item.username
        self.password = item.password
        self.prefix = item.prefix

    def within(self, match: str | bytes | None) -> str | bytes:
        """A SCAN pattern confined to the prefix: ``match`` if it starts with it, else under it."""
        if match is None:
            return self.prefix + "*"
        if isinstance(match, bytes):
            return match if match.startswith(self.prefix.encode()) else self.prefix.encode() + match
        return match if match.startswith(self.prefix) else self.prefix + match

    if not TYPE_CHECKING:  # the signatures are redis-py's own, as type checkers see them on Redis

        def scan(self, cursor=0, match=None, count=None, _type=None, **kwargs):
            return self.client.scan(cursor, match=self.within(match), count=count, _type=_type, **kwargs)

        def scan_iter(self, match=None, count=None, _type=None, **kwargs):
            return self.client.scan_iter(match=self.within(match), count=count, _type=_type, **kwargs)

    def __repr__(self) -> str:
        return f"<RedisPrefixHandle prefix={self.prefix} url={redact_url(self.url)}>"
