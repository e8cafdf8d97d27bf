"""Connect faults: for a while, the server's listening socket answers no new connection at all.

A classic BPF socket filter that keeps no byte of any packet, attached to the listening socket,
makes the kernel drop every incoming SYN: the client gets neither a SYN-ACK nor a reset, and its
``connect`` waits, as it does for a host that is down or a listener whose backlog is full, until
its connect timeout fires (or the kernel's SYN retransmission gets through once the filter is
lifted: about 1 s, then 3 s, 7 s ... after the first try). Connections already open are sockets of
their own and keep working. Detaching the filter takes the listener back to normal.

Socket filters on TCP listeners are Linux's; elsewhere a connect fault is refused with a clear error.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
import time

import anyio

from ..._errors import ConfigError

__all__ = ["ConnectGate", "require_support"]

_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: keep 0 bytes, i.e. drop


class _Program(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def require_support() -> None:
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            f"fail(connect_delay=...) needs Linux (a socket filter on the listener); on {sys.platform} "
            "use first_byte_delay= for a timeout the client sees"
        )


class ConnectGate:
    """Shuts and reopens one listening socket to new connections; :meth:`run` (a background task
    of the server) reopens it when the time given to :meth:`shut` is up."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._until = 0.0
        self._shut = False
        self._closed = False
        self._wake = anyio.Event()

    @property
    def is_shut(self) -> bool:
        return self._shut

    def shut(self, seconds: float) -> None:
        """Answer no new connection for ``seconds`` (from now; a later end wins over an earlier one)."""
        require_support()
        if not self._shut:
            code = ctypes.create_string_buffer(_DROP_ALL)
            program = _Program(1, ctypes.addressof(code))
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, ctypes.string_at(ctypes.addressof(program),
                                                                                          ctypes.sizeof(program)))
            self._shut = True
        self._until = max(self._until, time.monotonic() + seconds)
        self._wake.set()

    def open(self) -> None:
        """Take new connections again (now)."""
        if self._shut:
            self._shut = False
            self._until = 0.0
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
            except OSError:
                pass  # the listener is closed already: nothing left to reopen

    async def run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._shut and (left := self._until - time.monotonic()) > 0:
                with anyio.move_on_after(left):
                    await self._wake.wait()  # shut again meanwhile, or closed
                self._wake = anyio.Event() if self._wake.is_set() else self._wake
            self.open()

    def close(self) -> None:
        self.open()
        self._closed = True
        self._wake.set()
