"""isolated_redis() on a server with one database (a Redis Cluster, a managed Redis): key prefixes.

Each test leases a number ``n`` and gets the prefix ``{ie:<n>}:``. The braces are a hash tag: every
key of one prefix lives in one cluster slot, so multi-key commands, transactions and scripts work
on a cluster as on a single server. The test's client authenticates as ``ie-p-<n>``, an ACL user
allowed the keys ``{ie:<n>}:*`` and the channels ``{ie:<n>}:*`` and nothing else: a read, write or
publish outside its namespace is refused by the server (``NOPERM``), as are ``FLUSHDB``,
``FLUSHALL``, ``KEYS``, ``SELECT`` and the ``@admin`` commands. ``SCAN`` stays allowed (apps scan
their key prefix): the handle's ``scan``/``scan_iter`` stay in the prefix, a bare one lists other
tests' key names. A connection a test logged in as someone else is closed on release
(:mod:`._redis_reauth`).

The prefixes are leased in the server as the databases are (:mod:`.redis`): ``SET NX PX`` on
``{ie:leases}:p:<n>`` (one slot, so one script leases on a cluster too), kept alive by the same
heartbeat thread (:mod:`._redis_leases`). On release, and on a fresh lease (a previous owner may
have died), the prefix's keys are deleted with ``SCAN``/``UNLINK`` on every primary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from typing import Any

import anyio

from .._contract import Kept
from .._drivers import redis as redis_driver
from .._drivers import redis_cluster
from .._errors import ConfigError, IsolationBroken
from .._ownership import Scope, alive, parse
from .._pool import TryLater
from .._runtime import Runtime
from .._servers import _redis_acl
from .._servers.redis import RedisServer
from . import redis as db_mode
from ._redis_leases import _Bank, _LeaseKeeper
from ._redis_reauth import guard, log_in_again

__all__ = ["PREFIXES", "lease_key", "prefix_of", "prefixes_for", "reap_prefixes", "user_of"]

_ALL = Scope()
PREFIXES = 1024
"""How many prefixes may be leased from one server at once (by every process and run together)."""

_ANCHOR = "{ie:leases}:p:0"  # never leased: it names the leases' slot, so a cluster routes the scripts
_ACQUIRE = db_mode.acquire_script("{ie:leases}:p:")
_CLEAN = """
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  if #r[2] > 0 then n = n + redis.call('UNLINK', unpack(r[2])) end
until cursor == '0'
return n
"""
_REFUSED = ("-flushall", "-flushdb", "-swapdb", "-move", "-migrate", "-select", "-keys", "-randomkey",
            "-script|flush", "-function|flush")
_TAGGED = re.compile(rb"^\{ie:(\d+)\}:")


def lease_key(n: int) -> str:
    return f"{{ie:leases}}:p:{n}"


def prefix_of(n: int) -> str:
    return f"{{ie:{n}}}:"


def user_of(n: int) -> str:
    return f"ie-p-{n}"


def _password(server: RedisServer, n: int) -> str:
    # Derived from what every process of every run given the same TEST_REDIS_URL knows.
    secret = server.acl_secret or _redis_acl.external_secret(server.username, server.password, server.url(0))
    return hmac.new(secret.encode(), user_of(n).encode(), hashlib.sha256).hexdigest()


def _connect(server: RedisServer, **kwargs: Any) -> Any:
    """A sync admin client of ``server`` for the lease thread (on a cluster, of the leases' node)."""
    if server.cluster:
        return _LeaseNode(server, **kwargs)
    return redis_driver.sync_client(**server.client_kwargs(0), **kwargs, retry=None)


# Where each cluster's leases were last found (by server key): the next beat goes there at once.
_lease_nodes: dict[str, tuple[str, int]] = {}


class _LeaseNode:
    """The node serving the leases' slot, found by following ``MOVED``: all the heartbeat needs of
    a cluster, without a cluster client's start-up (``CLUSTER SLOTS``, ``COMMAND``) on every beat."""

    def __init__(self, server: RedisServer, **kwargs: Any) -> None:
        self._key = server.key
        self._kwargs = {**redis_cluster.cluster_kwargs(server), **kwargs, "retry": None}
        host, port = _lease_nodes.get(self._key, (self._kwargs["host"], self._kwargs["port"]))
        self._client = redis_driver.sync_client(**{**self._kwargs, "host": host, "port": port})

    def eval(self, *args: Any) -> Any:
        from redis.exceptions import ConnectionError as Lost
        from redis.exceptions import MovedError

        for _ in range(3):  # a failover moves the slot once; a third MOVED is a cluster in flux
            try:
                return self._client.eval(*args)
            except MovedError as moved:
                where = (str(moved.host), int(moved.port))
            except Lost:
                if _lease_nodes.pop(self._key, None) is None:
                    raise  # the seed node itself does not answer
                where = (self._kwargs["host"], self._kwargs["port"])  # that node died: ask the seed again
            self._client.close()
            self._client = redis_driver.sync_client(**{**self._kwargs, "host": where[0], "port": where[1]})
            _lease_nodes[self._key] = where
        return self._client.eval(*args)

    def close(self) -> None:
        self._client.close()


_keeper = _LeaseKeeper(
    db_mode._REFRESH, db_mode._owner, db_mode._beat_ttl_ms, db_mode._beat_every_s,
    key=lease_key, what=lambda n: f"Redis prefix {prefix_of(n)}", connect=_connect,
)
# Clean prefixes this process still leases, between event loops (pytest-asyncio makes one per test).
_bank = _Bank(_keeper, db_mode._RELEASE, db_mode._owner)


class _Prefix:
    # ``db`` is the leased number, under the name the lease keeper knows its items by.
    __slots__ = ("clean", "client", "db", "lost", "password", "prefix", "server", "url", "username")

    def __init__(self, server: RedisServer, n: int, client: Any) -> None:
        self.server = server
        self.db = n
        self.prefix = prefix_of(n)
        self.client = client
        user = _user_server(server, n)
        self.url, self.username, self.password = user.url(0), user.username, user.password
        self.lost: str | None = None
        self.clean = True


def _user_server(server: RedisServer, n: int) -> RedisServer:
    """``server`` as the ACL user of prefix ``n``."""
    return dataclasses.replace(server, username=user_of(n), password=_password(server, n))


# The command table of each cluster (by server key), learnt by its first client for the next ones.
_commands: dict[str, dict[str, Any]] = {}


def _admin(server: RedisServer) -> Any:
    if server.cluster:
        commands = _commands.setdefault(server.key, {})
        return redis_cluster.asyncio_cluster_client(**redis_cluster.cluster_kwargs(server), commands=commands)
    return redis_driver.asyncio_client(**server.client_kwargs(0))


def _test_client(server: RedisServer, n: int) -> Any:
    user = _user_server(server, n)
    if server.cluster:
        commands = _commands.setdefault(server.key, {})
        return guard(redis_cluster.asyncio_cluster_client(**redis_cluster.cluster_kwargs(user), commands=commands))
    return guard(redis_driver.asyncio_client(**user.client_kwargs(0)))


class _Prefixes:
    """Leases prefixes of one server for one event loop: the admin connection, the ACL users."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self._control: Any = None
        self.lock = anyio.Lock()
        self._db_rule: bool | None = None  # the server restricts users to databases (db=0)

    @property
    def control(self) -> Any:
        if self._control is None:
            self._control = _admin(self.server)
        return self._control

    async def _everywhere(self, *args: Any, replicas: bool = False) -> Any:
        """``args`` on every primary (and replica) of a cluster, or on the server; once more with a
        new client when a node is gone (after a failover, the old client still names it)."""
        from redis.exceptions import ConnectionError as Lost

        for attempt in (1, 2):
            control = self.control
            try:
                if not self.server.cluster:
                    return [await control.execute_command(*args)]
                if not control.get_nodes():
                    await control.initialize()
                nodes = control.get_nodes() if replicas else control.get_primaries()
                return list((await control.execute_command(*args, target_nodes=nodes)).values())
            except (Lost, OSError):
                if attempt == 2:
                    raise
                self._control = None
                await control.aclose()
        raise AssertionError("unreachable")

    async def wipe(self, n: int) -> None:
        """Delete every key of prefix ``n``, on every primary."""
        await self._everywhere("EVAL", _CLEAN, 0, prefix_of(n) + "*")

    async def _make_user(self, n: int) -> None:
        from redis.exceptions import NoPermissionError, ResponseError

        rules = ["reset", "on", ">" + _password(self.server, n), f"~{prefix_of(n)}*", f"&{prefix_of(n)}*",
                 "+@all", "-@admin", *_REFUSED]
        try:
            if self._db_rule is not False:
                try:
                    await self._everywhere("ACL", "SETUSER", user_of(n), *rules, "db=0", replicas=True)
                    self._db_rule = True
                    return
                except ResponseError as exc:
                    if "db=0" not in str(exc) and "Syntax" not in str(exc):
                        raise
                    self._db_rule = False  # Redis, Valkey < 9.1: no database rules; COPY could reach one
            extra = [] if self.server.cluster else ["-copy"]
            await self._everywhere("ACL", "SETUSER", user_of(n), *rules, *extra, replicas=True)
        except (NoPermissionError, ResponseError) as exc:
            raise ConfigError(
                f"isolated_redis in prefix mode makes an ACL user per test, and the server at "
                f"{self.server.redacted} refused ACL SETUSER ({exc}); use a user allowed +acl in "
                "TEST_REDIS_URL (docs/fleet.md lists the grants)"
            ) from None

    async def create(self) -> _Prefix:
        banked: _Prefix | None = _bank.take(self.server)
        if banked is not None and banked.server.acl_secret != self.server.acl_secret:
            _keeper.remove(banked)  # banked before its (embedded) server restarted: that lease went with it
            banked = None
        if banked is not None:  # wiped, still leased: only this loop's client is new
            banked.client = await self._client(banked.db)
            _keeper.add(banked)  # still kept alive; this wakes the thread, which looks at its period again
            return banked
        owner, ttl = db_mode._owner(), db_mode._ttl_ms()
        async with self.lock:
            if _bank.first_use(self.server):
                await _reap(self, kept=False)
            n = int(await self.control.eval(_ACQUIRE, 1, _ANCHOR, owner, ttl, 1, PREFIXES))
            if n < 0 and await _reap(self, kept=False):
                n = int(await self.control.eval(_ACQUIRE, 1, _ANCHOR, owner, ttl, 1, PREFIXES))
        if n < 0:
            raise TryLater(f"all {PREFIXES} Redis prefixes of {self.server.redacted} are leased (by this and "
                           "other processes); run fewer workers or lower the capacity")
        try:
            await self.wipe(n)  # a previous owner may have died mid-test
            await self._make_user(n)
            client = await self._client(n)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(n)
            raise
        item = _Prefix(self.server, n, client)
        _keeper.add(item)
        return item

    async def _client(self, n: int) -> Any:
        client = _test_client(self.server, n)
        if self.server.cluster:
            try:
                await client.initialize()  # learn the slots now: a pubsub() before any command needs them
            except BaseException:
                await client.aclose()
                raise
        return client

    async def clean(self, item: _Prefix) -> None:
        if item.lost is not None:
            raise IsolationBroken(item.lost)
        await self.wipe(item.db)
        await log_in_again(item.client)  # a test that logged a connection in as someone else
        item.clean = True

    async def destroy(self, item: _Prefix) -> None:
        if item.clean and item.lost is None:
            # Idle in a closing loop's pool, wiped when it came back: the lease stays with the
            # process for the next loop, only this loop's client goes.
            client, item.client = item.client, None
            await client.aclose()
            _bank.put(item)
            return
        if item.lost is not None:  # not ours any more: nothing to wipe or give back (see RedisPooled.destroy)
            _keeper.discard(self.server, item.db)
            await item.client.aclose()
            return
        try:
            await self.wipe(item.db)
        finally:
            try:
                await self._release(item.db)
            finally:
                await item.client.aclose()

    async def _release(self, n: int) -> None:
        _keeper.discard(self.server, n)
        async with self.lock:
            await self.control.eval(db_mode._RELEASE, 1, lease_key(n), db_mode._owner())

    async def keep(self, item: _Prefix) -> Kept:
        label = json.dumps({**json.loads(db_mode._owner()), "kept": True}, separators=(",", ":"))
        async with self.lock:
            await self.control.eval(db_mode._KEEP, 1, lease_key(item.db), db_mode._owner(), label)
        _keeper.remove(item)
        await item.client.aclose()
        where = f"-h {self.server.host} -p {self.server.port or 6379}" if self.server.host else \
            f"-s {self.server.unix_socket}"
        reach = f"redis-cli {'-c ' if self.server.cluster else ''}{where} --scan --pattern '{item.prefix}*'"
        return Kept("redis", f"prefix {item.prefix} at {self.server.redacted}", reach)

    async def aclose(self) -> None:
        if self._control is not None:
            await self._control.aclose()


async def _reap(prefixes: _Prefixes, *, kept: bool, scope: Scope = _ALL, dry_run: bool = False) -> list[int]:
    """Free the prefixes whose owner died on this host (with ``kept``, also those kept for failed
    tests), and delete their keys; ``scope`` narrows it, ``dry_run`` only lists them."""
    control, freed = prefixes.control, []
    keys = [lease_key(n) for n in range(1, PREFIXES + 1)]
    for start in range(0, len(keys), 256):
        chunk = keys[start : start + 256]
        for key, value in zip(chunk, await control.mget(chunk), strict=True):
            parsed = parse(value) if value is not None else None
            if parsed is None or not scope.covers(parsed[0]):
                continue
            if not kept if parsed[1].get("kept") else alive(parsed[0]) is not False:
                continue
            if dry_run or await control.eval(db_mode._RELEASE, 1, key, value):
                freed.append(int(key.rsplit(":", 1)[1]))
    for n in [] if dry_run else freed:
        await prefixes.wipe(n)
    return freed


_FIND = """
local cursor, found, seen = '0', {}, {}
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local tag = string.match(k, '^{ie:%d+}:')
    if tag and not seen[tag] then seen[tag] = true; found[#found + 1] = k end
  end
until cursor == '0'
return found
"""


async def reap_prefixes(
    server: RedisServer, *, kept: bool = False, scope: Scope = _ALL, dry_run: bool = False
) -> list[str]:
    """``isolated-env prune``: what :func:`_reap` frees, and the keys of prefixes nobody leases
    (their owner's lease expired: it died on another machine) unless ``scope`` narrows it (they
    have no owner left to tell); ``dry_run`` only lists them."""
    prefixes = _Prefixes(server)
    try:
        freed = set(await _reap(prefixes, kept=kept, scope=scope, dry_run=dry_run))
        found: set[int] = set()
        if scope == _ALL:
            for keys in await prefixes._everywhere("EVAL", _FIND, 0, "{ie:*}:*"):  # one key per prefix found
                found |= {int(m.group(1)) for k in keys if (m := _TAGGED.match(k))}
        found -= freed
        if found:
            ordered = sorted(found)
            leases = await prefixes.control.mget([lease_key(n) for n in ordered])
            for n, lease in zip(ordered, leases, strict=True):
                if lease is None:
                    if not dry_run:
                        await prefixes.wipe(n)
                    freed.add(n)
    finally:
        await prefixes.aclose()
    return [f"redis prefix {prefix_of(n)} ({server.redacted})" for n in sorted(freed)]


def prefixes_for(server: RedisServer, runtime: Runtime) -> _Prefixes:
    key = ("redis-prefixes", server.key)
    prefixes: _Prefixes | None = runtime.objects.get(key)
    if prefixes is None:
        prefixes = runtime.objects[key] = _Prefixes(server)
        runtime.on_close(prefixes.aclose)
    return prefixes
