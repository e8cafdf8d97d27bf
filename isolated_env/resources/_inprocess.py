"""The lifecycle every in-process server (WebSocket, HTTP, the LLM server) shares.

A server answers its connections in background tasks. What goes wrong there (a handler that raised,
a request nobody expected, a task that failed, a handler stuck at exit) must reach the test that
caused it, never only a log: the server records it in a :class:`ProblemLog`, the handle's
``check()`` raises it in the test, and :func:`serving` raises it at the latest on exit, or adds it
as a note to the test's own error when the test has already failed.

A third server reuses it like this::

    class LlmHandle(InProcessHandle):           # check(), the problem log, a pulse for waiters
        def _unmet(self) -> list[Problem]: ...  # expectations still unmet (optional)

    handle = LlmHandle("isolated_llm")
    tasks = ServerTasks(handle._problems, "isolated_llm's server", gone=(ConnectionError,))
    # each connection: await tasks.run(peer, work); unexpected input: handle._problems.unexpected(...)
    async with serving(handle._problems, aclose):  # aclose ends with `await tasks.stop()`
        yield handle
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar, cast

import anyio
import anyio.abc

from .._errors import ResourceCheckFailed
from .._runtime import Runtime, current_runtime
from ._reports import short as _short

__all__ = [
    "Acceptor",
    "InProcessHandle",
    "Problem",
    "ProblemLog",
    "Pulse",
    "ServerTasks",
    "Slot",
    "loopback_listener",
    "preview",
    "serving",
]

T = TypeVar("T")

_STOP_WAIT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing a server saw that the test did not plan for: an unexpected request, a handler
    that raised, an expectation left unmet."""

    message: str
    exc: BaseException | None = None


def _nothing_unmet() -> list[Problem]:
    return []


class ProblemLog:
    """Problems recorded by a server's background tasks, plus the unmet expectations ``unmet()``
    computes on demand (state, not events: reported by every check until met).

    ``reset()`` starts a clean slate for the next Hypothesis example but keeps what it clears, so the
    final exit still raises it: a problem is reported at the latest when the resource closes.
    """

    def __init__(
        self, what: str, unmet: Callable[[], list[Problem]] = _nothing_unmet, *, chain: bool = True
    ) -> None:
        self.what = what
        self.chain = chain
        """Whether a handler's exception becomes the error's ``__cause__`` (printed as a second
        traceback) or only one of its ``causes`` (its message saying where it was raised)."""
        self.current: list[Problem] = []
        self._unmet = unmet
        self._carried: list[Problem] = []
        self._resets = 0

    def record(self, message: str, exc: BaseException | None = None) -> None:
        self.current.append(Problem(message, exc))

    def unexpected(self, what: str, why: str) -> str:
        """Record that ``what`` arrived though nothing expected it, and why; returns the message
        (for a server that also tells its client)."""
        message = f"unexpected {what}: {why}"
        self.record(message)
        return message

    def reset(self) -> None:
        self._resets += 1
        for problem in [*self.current, *self._unmet()]:
            self._carried.append(Problem(f"(before reset {self._resets}) {problem.message}", problem.exc))
        self.current = []

    def report(self, *, unmet: bool = True) -> ResourceCheckFailed | None:
        """The error for the recorded problems (and the unmet expectations unless ``unmet=False``).
        The recorded ones count as reported (the test has seen them, and may have caught them on
        purpose), so neither a later check nor the exit raises them again."""
        error = self._error([*self.current, *(self._unmet() if unmet else [])])
        self.current = []
        return error

    def exit_error(self) -> ResourceCheckFailed | None:
        """The error for everything still unreported, including what resets carried over."""
        return self._error([*self._carried, *self.current, *self._unmet()])

    def _error(self, problems: list[Problem]) -> ResourceCheckFailed | None:
        if not problems:
            return None
        lines = [f"{self.what} saw {len(problems)} problem(s):"]
        for n, problem in enumerate(problems, 1):
            text = problem.message.replace("\n", "\n     ")
            lines.append(f"  {n}. {text}")
        error = _short(ResourceCheckFailed("\n".join(lines)))
        causes = [p.exc for p in problems if isinstance(p.exc, Exception)]
        error.causes = tuple(causes)
        if not self.chain:
            return error
        if len(causes) == 1:
            error.__cause__ = causes[0]
        elif causes:
            error.__cause__ = ExceptionGroup(f"{len(causes)} handler error(s)", causes)
        return error


class Pulse:
    """Wakes whoever waits for the server to receive something (``notify()`` on each arrival)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until ``done()`` holds, re-checked on every arrival; False if ``timeout`` passed first."""
        with anyio.move_on_after(timeout):
            while not done():
                await self._event.wait()
        return done()


class InProcessHandle:
    """Base of an in-process server's handle: its problem log, ``check()``, and a pulse."""

    def __init__(self, what: str) -> None:
        self._problems = ProblemLog(what, self._unmet)
        self._pulse = Pulse()

    def check(self) -> None:
        """Raise ResourceCheckFailed listing what the server saw go wrong so far: handler errors,
        unexpected messages or requests, unmet expectations. A recorded problem raised once is not
        raised again (nor on exit); an unmet expectation is raised by every check until it is met."""
        error = self._problems.report()
        if error is not None:
            raise error

    def _unmet(self) -> list[Problem]:
        """The expectations not met yet; a handle with expectations overrides this."""
        return []


class Slot(Generic[T]):
    """One server task (one connection): its peer, its cancel scope, and what it is busy with."""

    __slots__ = ("busy", "done", "peer", "scope")

    def __init__(self, peer: T) -> None:
        self.peer = peer
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.busy: str | None = None

    @contextlib.contextmanager
    def doing(self, what: str) -> Iterator[None]:
        """Mark the task busy with ``what`` (named in the report if the exit has to cancel it)."""
        self.busy = what
        try:
            yield
        finally:
            self.busy = None


class ServerTasks(Generic[T]):
    """The tasks a server runs, one per connection, each in a cancel scope of its own.

    What a task raises is recorded as a problem, except the exceptions in ``gone``, which only say
    the peer left. :meth:`stop` lets the tasks finish within a grace, then cancels the rest,
    reporting those still busy with a handler.
    """

    def __init__(self, problems: ProblemLog, what: str, *, gone: tuple[type[BaseException], ...]) -> None:
        self._problems = problems
        self._what = what
        self._gone = gone
        self._closed = False
        self.running: list[Slot[T]] = []

    async def run(self, peer: T, work: Callable[[Slot[T]], Awaitable[None]]) -> None:
        """Serve ``peer`` with ``work(slot)`` until it returns or :meth:`stop` cancels it."""
        slot = Slot(peer)
        if self._closed:  # accepted just as the server closed
            slot.scope.cancel()
        self.running.append(slot)
        try:
            with slot.scope:
                await work(slot)
        except self._gone:
            pass  # the peer went away mid-exchange: nobody is left to answer, nothing to report
        except Exception as exc:  # a failure of the server's own: the test sees it, not just a log
            self._problems.record(f"{self._what} failed: {exc!r}", exc)
        finally:
            self.running.remove(slot)
            slot.done.set()

    async def stop(self, grace: float = 0.0, *, final: bool = True) -> None:
        """Wait up to ``grace`` seconds for every task, then cancel the rest and wait for them.
        ``final=False`` (a reset) lets the server take new connections afterwards."""
        self._closed = self._closed or final
        with anyio.move_on_after(grace):
            for slot in list(self.running):
                await slot.done.wait()
        # Cancel scopes rather than tasks: a task may belong to the server library (websockets starts
        # one per connection), which must see its handler return, not its task cancelled under it.
        for slot in list(self.running):
            if slot.busy is not None:
                self._problems.record(
                    f"{slot.busy} was still running {grace:g} s after the connections closed; it "
                    "was cancelled (a handler that waits for something that never happens?)"
                )
            slot.scope.cancel()
        for slot in list(self.running):
            await slot.done.wait()


@contextlib.asynccontextmanager
async def serving(problems: ProblemLog, aclose: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Run the test's body; on the way out close the server (``aclose``), then raise what it saw
    go wrong, or add that as a note when the body has already failed, rather than replace its error."""
    body_error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        body_error = exc
        raise
    finally:
        await aclose()
        error = problems.exit_error()
        if error is not None:
            if body_error is None:
                raise error
            body_error.add_note(str(error))


def preview(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a problem message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def loopback_listener() -> anyio.abc.SocketListener:
    """A listener on 127.0.0.1 at a free port. anyio >= 4.10 wraps a socket of ours; before,
    ``create_tcp_listener`` resolves the address in a worker thread first, which costs about 0.25 ms."""
    wrap = getattr(anyio.abc.SocketListener, "from_socket", None)
    if wrap is None:
        listeners = (await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)).listeners
        return cast(anyio.abc.SocketListener, listeners[0])  # one address, so one listener
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        return cast(anyio.abc.SocketListener, await wrap(sock))
    except BaseException:
        sock.close()
        raise


class Acceptor:
    """Accepts connections on 127.0.0.1 at a free port and runs ``serve(stream)`` for each, in the
    loop's runtime task group: a server's life spans the test, which a task group of the resource's
    own could not (it is entered and left across a yield).

    :meth:`stop` ends accepting, :meth:`drain` waits for the connections still served. Both are
    bounded: a task the runtime cancelled before its first step (its loop closing under it) never
    runs its cleanup, and must not hang the exit. A failed ``accept`` (out of file descriptors, say)
    stops the server, and goes to ``on_accept_failure`` to be told in the test."""

    def __init__(
        self,
        serve: Callable[[anyio.abc.SocketStream], Awaitable[None]],
        *,
        name: str,
        on_error: Callable[[BaseException], None] | None = None,
        on_accept_failure: Callable[[OSError], None] | None = None,
    ) -> None:
        self._serve = serve
        self._name = name
        self._on_error = on_error
        self._on_accept_failure = on_accept_failure
        self._accepting = anyio.CancelScope()
        self._accepted = anyio.Event()  # the accept loop has ended
        self._live = 0  # connection tasks started and not finished
        self._idle = anyio.Event()
        self._idle.set()
        self._runtime: Runtime | None = None
        self._listener: anyio.abc.SocketListener | None = None

    @property
    def runtime(self) -> Runtime:
        """The runtime whose task group runs the connections (for the server's further tasks)."""
        assert self._runtime is not None, "start() first"
        return self._runtime

    async def start(self) -> anyio.abc.SocketListener:
        listener = self._listener = await loopback_listener()
        self._runtime = await current_runtime()
        await self._runtime.spawn(self._accept, listener, name=f"{self._name}-accept", daemon=True,
                                  on_error=self._on_error)
        return listener

    def stop_accepting(self) -> None:
        # Cancel the accept first and close the socket after: closing a socket another task waits
        # on is not portable across backends.
        self._accepting.cancel()

    async def stop(self) -> None:
        """Stop accepting; wait until the accept loop has closed the listener (or close it)."""
        self.stop_accepting()
        with anyio.move_on_after(_STOP_WAIT_S):
            await self._accepted.wait()
        if not self._accepted.is_set() and self._listener is not None:
            await self._listener.aclose()

    async def drain(self) -> None:
        """Wait until every connection accepted so far has been served."""
        with anyio.move_on_after(_STOP_WAIT_S):
            while self._live:  # including those accepted just now, which see the stop and close
                await self._idle.wait()

    async def _accept(self, listener: anyio.abc.SocketListener) -> None:
        try:
            with self._accepting:
                while True:
                    try:
                        stream = await listener.accept()
                    except ConnectionAbortedError:
                        continue  # the client gave up before we took it: nothing to serve
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        return
                    except OSError as exc:
                        if self._on_accept_failure is not None:
                            self._on_accept_failure(exc)
                        return
                    self._live += 1
                    if self._idle.is_set():
                        self._idle = anyio.Event()
                    await self.runtime.spawn(self._connection, stream, name=f"{self._name}-connection",
                                             daemon=True, on_error=self._on_error)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            self._accepted.set()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        try:
            await self._serve(stream)
        finally:
            self._live -= 1
            if not self._live:
                self._idle.set()
