"""What the in-process servers (WebSocket, HTTP) share: a log of problems seen in the background,
raised in the test by ``check()`` and on exit, never swallowed."""

from __future__ import annotations

import asyncio
import dataclasses

from .._errors import ResourceCheckFailed, ServiceUnavailable

__all__ = ["Problem", "ProblemLog", "require_asyncio"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing a server saw that the test did not plan for: an unmatched request, a handler
    that raised, an expectation left unmet."""

    message: str
    exc: BaseException | None = None


class ProblemLog:
    """Problems recorded by a server's background tasks.

    ``reset()`` starts a clean slate for the next Hypothesis example but keeps what it clears, so the
    final exit still raises it: a problem is reported at the latest when the resource closes.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.current: list[Problem] = []
        self._carried: list[Problem] = []
        self._resets = 0

    def record(self, message: str, exc: BaseException | None = None) -> None:
        self.current.append(Problem(message, exc))

    def reset(self, unmet: list[Problem]) -> None:
        self._resets += 1
        for problem in [*self.current, *unmet]:
            self._carried.append(Problem(f"(before reset {self._resets}) {problem.message}", problem.exc))
        self.current = []

    def report(self, unmet: list[Problem]) -> ResourceCheckFailed | None:
        """The error for the recorded problems plus ``unmet``; the recorded ones count as reported
        (the test has seen them, e.g. caught them on purpose), so the exit does not raise them again."""
        error = self.error([*self.current, *unmet])
        self.current = []
        return error

    def error(self, problems: list[Problem], *, carried: bool = False) -> ResourceCheckFailed | None:
        """A ResourceCheckFailed listing ``problems`` (plus those cleared by resets if ``carried``)."""
        everything = [*self._carried, *problems] if carried else problems
        if not everything:
            return None
        lines = [f"{self.what} saw {len(everything)} problem(s):"]
        for n, problem in enumerate(everything, 1):
            text = problem.message.replace("\n", "\n     ")
            lines.append(f"  {n}. {text}")
        error = ResourceCheckFailed("\n".join(lines))
        causes = [p.exc for p in everything if isinstance(p.exc, Exception)]
        if len(causes) == 1:
            error.__cause__ = causes[0]
        elif causes:
            error.__cause__ = ExceptionGroup(f"{len(causes)} handler error(s)", causes)
        return error


def require_asyncio(what: str) -> None:
    """The servers run on asyncio (websockets' asyncio server, asyncio streams); say so under trio."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise ServiceUnavailable(
            what,
            "it runs on asyncio and no asyncio event loop is running (trio is not supported yet)",
            fix="run the test on the asyncio backend (the anyio pytest plugin's default)",
        ) from None
