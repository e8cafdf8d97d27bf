"""The admin side of a Redis slot that a short-lived event loop takes over (pytest-asyncio's loop
per test): its flushes go through one admin client per database kept on the background loop
(:mod:`isolated_env._background`), which lives for the whole run, instead of a client opened in
every test's loop (a connection, ``AUTH``, ``CLIENT SETINFO`` and ``SELECT`` for each test).

It is still the admin user's own connection to that database, apart from the test's clients, so
nothing a test did to its connections can point the flush elsewhere.

Flushing is the one thing every test's release does, so :class:`RawAdmin` does it without the
background loop: over one plain socket of the slot's own, logged in as the admin user and
selected to the slot's database once, carried from loop to loop with the slot (a socket is bound
to no loop) and spoken to directly (``FLUSHDB`` and its ``+OK``): one round trip in the test's
own loop, instead of two thread hops around one on the background loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from .. import _background
from .._drivers import redis as redis_driver
from .._runtime import current_runtime
from .._servers.redis import RedisServer

__all__ = ["BackgroundAdmin", "RawAdmin"]


async def _client(server: RedisServer, db: int) -> Any:
    runtime = await current_runtime()  # the background loop's: closed with it, at session end
    key = ("redis-admin", server.key, server.acl_secret, db)
    client = runtime.objects.get(key)
    if client is None:
        client = runtime.objects[key] = redis_driver.asyncio_client(**server.client_kwargs(db))
        runtime.on_close(client.aclose)
    return client


async def _flushdb(server: RedisServer, db: int) -> Any:
    return await (await _client(server, db)).flushdb()


async def _copy_keys(server: RedisServer, db: int, target_db: int) -> int:
    from ._redis_nest import copy_keys

    return await copy_keys(await _client(server, db), target_db)


class BackgroundAdmin:
    """What a slot's ``admin`` needs (``flushdb``, ``copy_keys``, ``aclose``), answered on the background loop."""

    def __init__(self, server: RedisServer, db: int) -> None:
        self.server, self.db = server, db

    async def flushdb(self) -> Any:
        return await _background.call(_flushdb, self.server, self.db)

    async def copy_keys(self, target_db: int) -> int:
        """Copy every key of this database into ``target_db`` (a nested scope's, :mod:`._redis_nest`)."""
        copied: int = await _background.call(_copy_keys, self.server, self.db, target_db)
        return copied

    async def aclose(self) -> None:
        """Nothing of this loop's to close: the client is the background loop's, for the next loop too."""


_TIMEOUT_S = 30.0  # a flush is microseconds of the server's time: this bound is for a server gone silent


def _command(*args: bytes) -> bytes:
    """``args`` as one RESP command."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


class RawAdmin(BackgroundAdmin):
    """A slot's admin whose ``flushdb`` goes over a socket of its own in the running loop (see the
    module's docstring); ``copy_keys`` (a nested scope's, rare) stays on the background loop.

    One loop at a time uses it, as one loop at a time holds its slot. A socket the server closed, or
    on which something unexpected arrived while the slot was banked, is replaced by a new one."""

    def __init__(self, server: RedisServer, db: int) -> None:
        super().__init__(server, db)
        self._sock: socket.socket | None = None

    @staticmethod
    def usable(server: RedisServer) -> bool:
        """Whether ``server`` can be spoken to over a plain socket (not TLS)."""
        return bool(server.unix_socket) or not server.tls

    async def flushdb(self) -> bool:
        from ._redis_carry import _idle

        sock = self._sock
        if sock is not None and not _idle(sock):
            self.close()
        try:
            if self._sock is not None:
                try:
                    await self._ask(self._sock, [_command(b"FLUSHDB")])
                    return True
                except (ConnectionError, asyncio.IncompleteReadError):
                    self.close()  # closed by the server since the last flush: once more, on a new socket
            self._sock = await self._open()
            await self._ask(self._sock, [*self._login(), _command(b"FLUSHDB")])
            return True
        except BaseException:
            self.close()
            raise

    def _login(self) -> list[bytes]:
        server = self.server
        login = []
        if server.password is not None:
            who = [server.username.encode()] if server.username else []
            login.append(_command(b"AUTH", *who, server.password.encode()))
        login.append(_command(b"SELECT", str(self.db).encode()))
        return login

    async def _open(self) -> socket.socket:
        server = self.server
        loop = asyncio.get_running_loop()
        if server.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = server.unix_socket
        else:
            infos = await loop.getaddrinfo(server.host, server.port or 6379, type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    async def _ask(sock: socket.socket, commands: list[bytes]) -> None:
        """Send ``commands`` at once and read as many replies, each ``+OK`` (else the server's error)."""
        import redis.exceptions as rex

        loop = asyncio.get_running_loop()
        replies: list[bytes] = []
        buffer = b""
        async with asyncio.timeout(_TIMEOUT_S):
            await loop.sock_sendall(sock, b"".join(commands))
            while len(replies) < len(commands):
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise ConnectionError("the Redis server closed the admin connection")
                buffer += chunk
                *lines, buffer = buffer.split(b"\r\n")
                replies += lines
        for reply in replies:
            if reply != b"+OK":
                text = reply[1:].decode(errors="replace") if reply[:1] == b"-" else repr(reply)
                if text.startswith(("WRONGPASS", "NOAUTH", "NOPERM")):
                    raise rex.AuthenticationError(text)
                raise rex.ResponseError(text)

    def close(self) -> None:
        """Close the socket (the slot is released, lost or kept, or the run ends)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
