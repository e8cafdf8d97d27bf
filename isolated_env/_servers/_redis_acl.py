"""Guard rails of a Redis server: one restricted ACL user per logical database.

A test's client authenticates as ``ie-db-<n>``, the user of the database it leased, made once per
server (at the embedded server's start, all 1023 at once, ~80-90 ms) so nothing is paid per test.
That user may run every command on its own database and none that reaches another or the server
as a whole: ``SELECT`` of another database, ``SWAPDB``, ``MOVE``, ``COPY ... DB``, ``MIGRATE``,
``FLUSHALL`` and the ``@admin`` commands (``CONFIG``, ``ACL SETUSER``, ``CLIENT KILL``/``PAUSE``,
``DEBUG``, ``SHUTDOWN``, ``MONITOR``, ``REPLICAOF``, ...) are refused by the server with
``NOPERM``. Database 0, which holds the lease keys, cannot be reached at all. (``RESET``, which
any user may run and which makes the connection the default user, is refused by the test's client.)

Valkey 9.1 and later restrict a user to databases (``db=<n>``): every cross-database path, ``COPY
... DB`` included, is refused there. Redis 7 has no such rule; a user there may ``SELECT`` only its
own database (``+select|<n>``), and ``COPY`` is refused as a whole (its ``DB`` option would reach
another database).

Pub/sub channels are one namespace for the whole server, so each user may only use channels
named ``ie:<n>:*``; the test's client adds that prefix to the channels it sends and strips it from
what it receives (:mod:`..resources._redis_guard`), so tests name their channels as they like and a
``PUBLISH`` never reaches another test's subscriber.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket
from typing import Any

__all__ = [
    "CHANNELS", "USER", "create_users", "create_users_async", "external_secret", "new_secret", "password", "rules",
]

USER = "ie-db-{}"
"""The restricted user of database ``n``."""
CHANNELS = "ie:{}:"
"""The prefix of every pub/sub channel the user of database ``n`` may use."""

_REFUSED = ("-flushall", "-swapdb", "-move", "-migrate", "-select")


def new_secret() -> str:
    """A server's secret, from which each user's password is derived (kept in its 0600 state file)."""
    return secrets.token_urlsafe(24)


def password(secret: str, db: int) -> str:
    """The password of the user of database ``db``: derived, so any process holding the server's
    secret reaches it without another lookup."""
    return hmac.new(secret.encode(), USER.format(db).encode(), hashlib.sha256).hexdigest()


def rules(secret: str, db: int, *, db_acl: bool) -> list[str]:
    """The ``ACL SETUSER`` rules of the user of database ``db``."""
    return [
        "reset", "on", ">" + password(secret, db), "~*", "&" + CHANNELS.format(db) + "*",
        "+@all", "-@admin", *_REFUSED, f"+select|{db}",
        *([f"db={db}"] if db_acl else ["-copy"]),
    ]


def external_secret(username: str | None, password: str | None, where: str) -> str:
    """The secret of an external server's users: derived from how the admin reaches it, so every
    process and run given the same ``TEST_REDIS_URL`` derives the same passwords."""
    material = f"isolated_env redis users|{username or ''}|{password or ''}|{where}"
    return hashlib.sha256(material.encode()).hexdigest()


async def create_users_async(client: Any, databases: int, secret: str) -> bool:
    """Make (or remake, with the same rules) the user of every database but 0 through the asyncio
    ``client`` (an external server's admin); True when the server has per-database rules."""
    from redis.exceptions import ResponseError

    try:
        await client.execute_command("ACL", "SETUSER", "ie-db-probe", "db=0")
    except ResponseError as exc:
        if "db=0" not in str(exc) and "Syntax" not in str(exc):
            raise  # not a rule this server lacks: no right to run ACL SETUSER at all
        db_acl = False
    else:
        await client.execute_command("ACL", "DELUSER", "ie-db-probe")
        db_acl = True
    pipe = client.pipeline(transaction=False)
    for db in range(1, databases):
        pipe.execute_command("ACL", "SETUSER", USER.format(db), *rules(secret, db, db_acl=db_acl))
    await pipe.execute()
    return db_acl


def _command(*args: str) -> bytes:
    """One command in RESP, as the server reads it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _replies(sock: socket.socket, count: int, buffer: bytearray) -> list[bytes]:
    """The next ``count`` one-line replies (``+OK``, ``:1``, ``-ERR …``: all these commands answer)."""
    lines: list[bytes] = []
    while len(lines) < count:
        end = buffer.find(b"\r\n")
        if end < 0:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the Redis server closed the connection")
            buffer += chunk
            continue
        lines.append(bytes(buffer[:end]))
        del buffer[: end + 2]
    return lines


def create_users(unix_socket: str, databases: int, *, admin_password: str | None = None) -> dict[str, Any]:
    """Make the user of every database but 0 on the server at ``unix_socket``; what the server's
    state records so every process can authenticate as them.

    Written straight to the socket, all at once: through redis-py's pipeline the client's work on
    1023 commands was most of the ~80 ms this took, and it sits in every server start."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(unix_socket)
        buffer = bytearray()
        auth = [_command("AUTH", admin_password)] if admin_password else []
        # Whether the server restricts users to databases (``db=<n>``: Valkey 9.1 and later).
        sock.sendall(b"".join([*auth, _command("ACL", "SETUSER", "ie-db-probe", "db=0")]))
        answers = _replies(sock, len(auth) + 1, buffer)
        if auth and not answers[0].startswith(b"+"):
            raise ConnectionError(f"the Redis server refused its admin password: {answers[0].decode(errors='replace')}")
        db_acl = answers[-1].startswith(b"+")
        secret = new_secret()
        batch = [_command("ACL", "SETUSER", USER.format(db), *rules(secret, db, db_acl=db_acl))
                 for db in range(1, databases)]
        if db_acl:
            batch.insert(0, _command("ACL", "DELUSER", "ie-db-probe"))
        sock.sendall(b"".join(batch))
        failed = [line for line in _replies(sock, len(batch), buffer) if line.startswith(b"-")]
        if failed:
            raise ConnectionError(f"ACL SETUSER failed on the Redis server: {failed[0].decode(errors='replace')}")
    return {"acl_secret": secret, "acl_db": db_acl}
