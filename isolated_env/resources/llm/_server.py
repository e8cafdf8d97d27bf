"""The LLM server: a pooled loopback HTTP/1.1 server (the ``isolated_http`` one, h11 underneath)
that answers for whichever test's handle holds it, and sends each answer as a real server would,
faults included (a stream stalled or cut after chunk k, malformed SSE, a late first byte).

Starting a listener per test costs more than the test's own work, so servers live in a per-loop
pool: a test leases one, binds its handle, and on release every connection is closed and the
handle unbound, so the next test finds it pristine (a request that still reaches it gets a 503).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence

import anyio
from anyio.abc import SocketAttribute

from ..._contract import current_settings
from ..._pool import Pool
from ..._runtime import current_runtime
from .._inprocess import ProblemLog
from ..http._server import H11Server, RecordedRequest, Reply
from ._answer import Wire
from ._connect import ConnectGate
from ._script import Fault

__all__ = ["LlmServer", "lease_server", "to_reply"]

_STREAM_FAULTS = frozenset({"stall", "disconnect", "malformed"})
_MALFORMED = b'data: {"id": "truncated", "choices": [{"delta": {"content": \n\n'

Answerer = Callable[[RecordedRequest], Awaitable[Reply]]


class _Forward(ProblemLog):
    """The server's problem log: what it records goes to the bound handle's log (kept here between
    tests, for the next one to see, when no handle is bound)."""

    def __init__(self) -> None:
        super().__init__("isolated_llm's server")
        self.target: ProblemLog | None = None

    def record(self, message: str, exc: BaseException | None = None) -> None:
        if self.target is not None:
            self.target.record(message, exc)
        else:
            super().record(message, exc)


class LlmServer:
    """One listening server, answered by the handle bound to it."""

    def __init__(self) -> None:
        self.problems = _Forward()
        self.http = H11Server(self._answer, self.problems)
        self.port = 0
        self._answerer: Answerer | None = None
        self.gate: ConnectGate | None = None
        """Shuts the listener to new connections for a connect fault."""

    async def start(self) -> LlmServer:
        self.port = await self.http.start()
        self.gate = ConnectGate(_listening_socket(self.http))
        runtime = await current_runtime()
        await runtime.spawn(self.gate.run, name="isolated-llm-connect-gate", daemon=True)
        return self

    def bind(self, answerer: Answerer, problems: ProblemLog) -> None:
        self._answerer = answerer
        self.problems.target = problems
        for problem in self.problems.current:  # seen while nobody held the server: the next test hears of it
            problems.record(problem.message, problem.exc)
        self.problems.current = []

    async def unbind(self) -> None:
        self._answerer = None
        if self.gate is not None:
            self.gate.open()
        await self.http.drop_connections()
        self.problems.target = None

    async def _answer(self, request: RecordedRequest) -> Reply:
        answerer = self._answerer
        if answerer is None:
            return Reply.text(503, "isolated_llm: no test holds this server now (a client kept from an earlier test?)")
        return await answerer(request)

    async def aclose(self) -> None:
        if self.gate is not None:
            self.gate.close()
        await self.http.aclose()


def _listening_socket(http: H11Server) -> socket.socket:
    """The listening socket under ``http`` (the one place that reads the H11 server's acceptor)."""
    listener = getattr(getattr(http, "_acceptor", None), "_listener", None)
    if listener is None:
        raise RuntimeError("isolated_llm: the HTTP server's listener is not where it was (H11Server._acceptor)")
    sock: socket.socket = listener.extra(SocketAttribute.raw_socket)
    return sock


async def _create() -> LlmServer:
    return await LlmServer().start()


async def _destroy(server: LlmServer) -> None:
    await server.aclose()


@contextlib.asynccontextmanager
async def lease_server() -> AsyncIterator[LlmServer]:
    """A server from this event loop's pool, returned with its connections closed."""
    runtime = await current_runtime()
    settings = current_settings()

    def make() -> Pool[LlmServer]:
        return Pool(
            "isolated_llm servers",
            create=_create,
            destroy=_destroy,
            reset=LlmServer.unbind,
            capacity=max(settings.capacity, 16),
            lease_timeout=settings.lease_timeout,
        )

    pool = runtime.pool(("isolated_llm servers",), make)
    async with pool.lease() as lease:
        yield lease.value


def to_reply(wire: Wire, fault: Fault | None = None, marks: Sequence[float] | None = None) -> Reply:
    """``wire`` as the H11 server sends it; a stream fault or recorded offsets (``marks``, seconds
    since the answer started, one per frame) make the body a sequence
    of writes (a whole body is then one write)."""
    frames = wire.frames
    if frames is None and fault is not None and fault.kind in _STREAM_FAULTS:
        frames = (wire.body,)
    if frames is None:
        return Reply(wire.status, wire.headers, wire.body)
    return Reply(wire.status, wire.headers, _writes(frames, fault, marks))


async def _writes(
    frames: Sequence[bytes] | AsyncIterable[bytes], fault: Fault | None, marks: Sequence[float] | None
) -> AsyncIterator[bytes]:
    started = anyio.current_time()
    at = fault.after_chunk if fault is not None and fault.kind in _STREAM_FAULTS else -1
    source = _each(frames) if isinstance(frames, Sequence) else aiter(frames)
    n = 0
    try:
        async for frame in source:
            if n == at:
                async for extra in _inject(fault):
                    yield extra
            if marks is not None:
                late = anyio.current_time() - started
                if marks[n] > late:
                    await anyio.sleep(marks[n] - late)
            yield frame
            n += 1
        if at >= n:  # past the last frame: at the end
            async for extra in _inject(fault):
                yield extra
    finally:
        closer = getattr(source, "aclose", None)
        if closer is not None:
            await closer()  # a relayed stream: the upstream response is closed and the call settled now


async def _each(frames: Sequence[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


async def _inject(fault: Fault | None) -> AsyncIterator[bytes]:
    """What a stream fault does where it strikes."""
    assert fault is not None
    if fault.kind == "disconnect":  # the peer sees the body end short (no last chunk)
        raise ConnectionAbortedError("isolated_llm: disconnect injected by fail()")
    if fault.kind == "stall":
        await anyio.sleep(fault.seconds)
    elif fault.kind == "malformed":
        yield _MALFORMED
