"""A prefix's client stays logged in as the prefix's ACL user from one test to the next.

A test may log one of its connections in as someone else: ``AUTH``, ``HELLO … AUTH`` and ``RESET``
(back to the default user) are commands no ACL rule can refuse. Pooled as it is, that connection
would carry the other user's rights into the next test of the prefix. So every such command sent
through the test's client (commands, pipelines, transactions, on a cluster too) is noticed as its
reply comes back, with no round trip of its own, and on release the client's connections are
closed: each logs in again as the prefix's user when it is next used. A connection taken out of
the pool and driven by hand (``send_command``) is the test's own affair.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["guard", "log_in_again"]

_COMMANDS = ("AUTH", "HELLO", "RESET")
_moved: weakref.WeakSet[Any] = weakref.WeakSet()  # clients a test logged in as someone else (maybe)


def guard(client: Any) -> Any:
    """``client``, noticing when a test re-authenticates one of its connections."""
    ref = weakref.ref(client)
    callbacks = client.response_callbacks
    for command in _COMMANDS:
        original = callbacks.get(command)

        def seen(response: Any, _original: Any = original, **options: Any) -> Any:
            found = ref()
            if found is not None:
                _moved.add(found)
            return _original(response, **options) if _original is not None else response

        # A cluster client's table is a plain dict, looked up as the command was spelt.
        for spelling in (command, command.lower(), command.capitalize()):
            client.set_response_callback(spelling, seen)
    return client


async def log_in_again(client: Any) -> bool:
    """Close ``client``'s connections when a test may have logged one in as someone else (they log
    in as the client's own user when next used); returns whether it did."""
    if client not in _moved:
        return False
    _moved.discard(client)
    if hasattr(client, "get_nodes"):  # a RedisCluster: a pool per node
        for node in client.get_nodes():
            await node.disconnect()
    else:
        await client.connection_pool.disconnect()
    return True
