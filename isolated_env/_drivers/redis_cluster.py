"""redis-py's cluster clients, for prefix mode on a Redis Cluster.

A ``RedisCluster`` learns, as it starts, where the keys of every command are (``COMMAND``: a
reply of a few hundred entries, about 300 ms of parsing in redis-py 8 on these machines). Each test
of a cluster gets a client of its own (its own ACL user), so :func:`asyncio_cluster_client` hands
the table the first client of a server learnt to the next ones (:func:`_share_commands`, the one
place that touches redis-py's ``commands_parser``).
"""

from __future__ import annotations

from typing import Any

from ._seams import tested
from .redis import _client_defaults

__all__ = ["TESTED", "asyncio_cluster_client", "cluster_kwargs"]

TESTED = ">=5.0,<9"
"""The redis-py versions whose ``RedisCluster.commands_parser`` was checked (tests/drivers)."""


def cluster_kwargs(server: Any) -> dict[str, Any]:
    """Keyword arguments of a cluster client for ``server`` (a RedisServer with ``cluster``): a seed
    node, from which the client learns the others."""
    kwargs: dict[str, Any] = {"host": server.host, "port": server.port or 6379}
    if server.tls:
        kwargs["ssl"] = True
    if server.username:
        kwargs["username"] = server.username
    if server.password is not None:
        kwargs["password"] = server.password
    return kwargs


def asyncio_cluster_client(*, commands: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A ``redis.asyncio.cluster.RedisCluster`` (with ``aclose()`` on every version). ``commands``
    is a dict shared by the clients of one server: the command table is learnt once into it."""
    from redis.asyncio.cluster import RedisCluster

    cls: Any = RedisCluster
    if not hasattr(cls, "aclose"):  # before redis 5.0.1, which named it close()
        cls = type("RedisCluster", (cls,), {"aclose": cls.close})
    client = cls(**(_client_defaults() | kwargs))
    if commands is not None:
        _share_commands(client, commands)
    return client


def _share_commands(client: Any, shared: dict[str, Any]) -> None:
    """Let ``client`` take its command table from ``shared`` (filled by the first to learn it)."""
    if not tested("redis", TESTED):
        return  # another redis-py: each client runs COMMAND itself, as redis-py does
    try:
        from redis._parsers import AsyncCommandsParser
    except ImportError:  # the seam moved: the slower, public path
        return

    class SharedCommands(AsyncCommandsParser):
        async def initialize(self, node: Any = None) -> None:
            table = shared.get("table")
            if table is None:
                await super().initialize(node)
                shared["table"] = self.commands
                return
            if node is not None:
                self.node = node
            self.commands = table

    client.commands_parser = SharedCommands()

