"""The client side of the Redis guard rails: a test's client, and its pub/sub channels made private.

The server lets the user of database ``n`` use only channels named ``ie:<n>:*`` (see
:mod:`.._servers._redis_acl`). The test's client adds that prefix to every channel it sends and
strips it from every channel it receives, in its connection class, so ``publish``, ``subscribe``,
``PubSub`` objects, pipelines and raw ``execute_command`` all keep the names the test chose; a
``PUBLISH`` reaches only the subscribers of the same test. ``PSUBSCRIBE`` patterns get the prefix
too; Redis accepts a subscribe pattern only when it is literally one of the user's allowed ones, so
the client adds each prefixed pattern to its user (``ACL SETUSER``, as the admin) just before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._drivers import redis as redis_driver
from .._servers import _redis_acl
from .._servers.redis import RedisServer
from ._redis_carry import Carried

__all__ = ["test_client", "untaint"]

# Commands whose every argument after the name is a channel (or a pattern).
_ALL_CHANNELS = frozenset(
    {b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE", b"PUNSUBSCRIBE", b"SSUBSCRIBE", b"SUNSUBSCRIBE"}
)
_FIRST_CHANNEL = frozenset({b"PUBLISH", b"SPUBLISH"})
_WATCHED = frozenset(
    {name.decode() for name in _ALL_CHANNELS | _FIRST_CHANNEL} | {"RESET", "AUTH", "HELLO"}
)  # and every PUBSUB subcommand
# Replies carrying a channel in position 1 (pmessage: the pattern in 1 and the channel in 2).
_REPLIES = frozenset(
    {"message", "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "smessage", "ssubscribe", "sunsubscribe"}
)


_HINT = (
    "(isolated_redis guard rails: a test's client may use only its own database and channels; "
    "SELECT, SWAPDB, MOVE, FLUSHALL, CONFIG and the other @admin commands are refused. "
    "Use isolated_redis(admin=True) for a private server where they are allowed)"
)


def _name(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg.upper()
    if isinstance(arg, str):
        return arg.encode().upper()
    return b""


def _add(prefix: bytes, value: Any) -> Any:
    if isinstance(value, str):
        return prefix.decode() + value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return prefix + bytes(value)
    return prefix.decode() + str(value)


def _strip(prefix: bytes, value: Any) -> Any:
    if isinstance(value, bytes) and value.startswith(prefix):
        return value[len(prefix):]
    if isinstance(value, str) and value.startswith(text := prefix.decode()):
        return value[len(text):]
    return value


def _prefixed(prefix: bytes, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` of one command with its channels prefixed (unchanged for any other command)."""
    if not args:
        return args
    head = args[0]
    if isinstance(head, str) and " " in head:
        args = tuple(head.split()) + args[1:]
    elif isinstance(head, bytes) and b" " in head:
        args = tuple(head.split()) + args[1:]
    name = _name(args[0])
    if name in _ALL_CHANNELS:
        return (args[0], *(_add(prefix, a) for a in args[1:]))
    if name in _FIRST_CHANNEL and len(args) > 1:
        return (args[0], _add(prefix, args[1]), *args[2:])
    if name == b"PUBSUB" and len(args) > 1:
        sub = _name(args[1])
        if sub in (b"CHANNELS", b"SHARDCHANNELS"):
            return (*args[:2], _add(prefix, args[2] if len(args) > 2 else "*"))
        if sub in (b"NUMSUB", b"SHARDNUMSUB"):
            return (*args[:2], *(_add(prefix, a) for a in args[2:]))
    return args


class _PrivateChannels:
    """Mixed into redis-py's connection classes: channels prefixed on the way out, stripped on the
    way in; and a connection on which the test authenticated again marks its client tainted."""

    channel_prefix: bytes = b""
    tainted: list[bool]  # one per client, shared by its connections (see test_client)
    _subscribed = False
    _ready = False

    # Redis accepts a PSUBSCRIBE pattern only when it is literally one of the user's allowed channel
    # patterns: each pattern (with the prefix) is allowed just before it is sent (see test_client).
    allow_patterns: Callable[[list[Any]], Awaitable[None]] | None = None

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        if args and self.allow_patterns is not None and _name(args[0]) == b"PSUBSCRIBE":
            patterns = [p for p in args[1:] if p not in ("*", b"*")]
            if patterns:
                await self.allow_patterns(patterns)
        await super().send_command(*args, **kwargs)  # type: ignore[misc]

    async def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        self._ready = False
        await super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        self._ready = True

    def pack_command(self, *args: Any) -> Any:
        head = args[0]
        # The fast path: redis-py names its commands in upper case, and most are none of ours.
        if head.__class__ is str and head.isupper() and head not in _WATCHED and not head.startswith("PUBSUB"):
            return super().pack_command(*args)  # type: ignore[misc]
        args = _prefixed(self.channel_prefix, args)
        name = _name(args[0])
        if name in (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"):
            self._subscribed = True
        elif name == b"RESET":
            from redis.exceptions import NoPermissionError

            # The server lets any user RESET, and RESET makes the connection the default user.
            raise NoPermissionError(f"RESET is refused by the client {_HINT}")
        elif name in (b"AUTH", b"HELLO") and self._ready:
            # The test switches the user of a pooled connection: the release drops the client's
            # connections, so the next test of this database starts from its restricted user again.
            self.tainted[0] = True
        return super().pack_command(*args)  # type: ignore[misc]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            if type(exc).__name__ == "NoPermissionError":  # redis-py's, named so redis stays imported lazily
                raise type(exc)(f"{exc} {_HINT}") from None
            raise
        # Only a subscribed connection receives pub/sub messages: another reply that merely looks
        # like one (a list starting with "message") is left alone.
        if self._subscribed and response.__class__ is list and len(response) >= 2:
            kind = response[0].decode() if isinstance(response[0], bytes) else response[0]
            if kind in _REPLIES:
                response = [response[0], _strip(self.channel_prefix, response[1]), *response[2:]]
            elif kind == "pmessage" and len(response) >= 3:
                prefix = self.channel_prefix
                response = [response[0], _strip(prefix, response[1]), _strip(prefix, response[2]), *response[3:]]
        return response

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._subscribed = False
        await super().disconnect(*args, **kwargs)  # type: ignore[misc]


def _connection_class(
    base: type, prefix: bytes, allow: Callable[[list[Any]], Awaitable[None]], parked: list[Any] | None
) -> type:
    # A class per client: ``tainted`` is that client's, ``parked`` its slot's sockets of a past loop.
    attrs = {"channel_prefix": prefix, "tainted": [False], "allow_patterns": staticmethod(allow),
             "parked": parked if parked is not None else ()}
    return type(f"Private{base.__name__}", (_PrivateChannels, Carried, base), attrs)


# The connection class of a database's test client, made once per process and database, not per
# client: a loop per test would make (and the garbage collector sweep) a class per test. One client
# of a database exists at a time (its slot is in one loop, or banked with its client closed).
_classes: dict[tuple[Any, ...], type] = {}


def _class_for(server: RedisServer, db: int, base: type, prefix: bytes, parked: list[Any] | None) -> type:
    key = (server.key, server.acl_secret, db, base)
    cls = _classes.get(key)
    if cls is None:
        cls = _classes[key] = _connection_class(base, prefix, _pattern_allower(server, db, prefix), parked)
    cls.tainted = [False]  # type: ignore[attr-defined]  # the new client's
    cls.parked = parked if parked is not None else ()  # type: ignore[attr-defined]
    return cls


def _pattern_allower(server: RedisServer, db: int, prefix: bytes) -> Callable[[list[Any]], Awaitable[None]]:
    user = _redis_acl.USER.format(db)

    async def allow(patterns: list[Any]) -> None:
        # As the admin, once per PSUBSCRIBE (rare): ACL SETUSER adds the prefixed pattern to the
        # user's channels. It stays in the test's own namespace (a literal prefix starts it).
        rules = [b"&" + prefix + (p if isinstance(p, bytes) else str(p).encode()) for p in patterns]
        admin = redis_driver.asyncio_client(**server.client_kwargs(0))
        try:
            await admin.execute_command("ACL", "SETUSER", user, *rules)
        finally:
            await admin.aclose()

    return allow


async def untaint(client: Any) -> None:
    """Drop the connections of a test's client on which the test authenticated again (``AUTH``,
    ``HELLO``): they may now be another user, or another database. Free when it did not."""
    cls = getattr(client.connection_pool, "connection_class", None)
    tainted = getattr(cls, "tainted", None)
    if tainted is not None and tainted[0]:
        tainted[0] = False
        await client.connection_pool.disconnect()


def _stripping(prefix: bytes, then: Callable[..., Any] | None, pairs: bool) -> Callable[..., Any]:
    def callback(response: Any, **options: Any) -> Any:
        value = then(response, **options) if then is not None else response
        if pairs:
            return [(_strip(prefix, c), n) for c, n in value]
        return [_strip(prefix, c) for c in value]

    return callback


def test_client(server: RedisServer, db: int, parked: list[Any] | None = None) -> Any:
    """The client a test gets for database ``db``: its restricted user, with private channels, when
    the server has guard rails; else an admin client as before. ``parked``: sockets of this
    database's test connections in a past loop, taken over before connecting anew (:mod:`._redis_carry`)."""
    client = redis_driver.asyncio_client(**server.test_kwargs(db))
    if not server.guarded:
        return client
    prefix = _redis_acl.CHANNELS.format(db).encode()
    pool = client.connection_pool
    pool.connection_class = _class_for(server, db, pool.connection_class, prefix, parked)
    for command, pairs in (("PUBSUB CHANNELS", False), ("PUBSUB SHARDCHANNELS", False),
                           ("PUBSUB NUMSUB", True), ("PUBSUB SHARDNUMSUB", True)):
        client.set_response_callback(command, _stripping(prefix, client.response_callbacks.get(command), pairs))
    return client
