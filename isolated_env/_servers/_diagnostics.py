"""What the embedded servers tell the user while they work.

Lines on the ``isolated_env`` logger: a server started (binary, version, state directory, log file,
startup time), what a reap removed and why. And one progress line while a start is slow (the first
run builds PostgreSQL's cluster cache), so a run that seems to hang says what it waits for; it goes
to ``sys.stderr`` unless a framework installs a sink of its own (:func:`set_progress_sink`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SLOW_START_S", "progress", "reaped", "set_progress_sink", "started"]

_log = logging.getLogger("isolated_env")

SLOW_START_S = 0.5
"""A start still running after this many seconds prints its progress line."""

_said: set[str] = set()  # kinds whose progress line this process printed
_said_lock = threading.Lock()
_sink: Callable[[str], None] | None = None


def set_progress_sink(sink: Callable[[str], None] | None) -> None:
    """Send progress lines to ``sink`` (e.g. pytest's terminal reporter) instead of ``sys.stderr``."""
    global _sink
    _sink = sink


def _say(line: str) -> None:
    if _sink is not None:
        _sink(line)
        return
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress(kind: str, what: str, detail: str | None = None) -> Iterator[None]:
    """Around a blocking start: once per process and ``kind``, if it is still running after
    :data:`SLOW_START_S`, print ``isolated_env: starting embedded <what> (<detail>)…``."""
    line = f"isolated_env: starting embedded {what}" + (f" ({detail})" if detail else "") + "…"

    def say() -> None:
        with _said_lock:
            if kind in _said:
                return
            _said.add(kind)
        try:
            _say(line)
        except (OSError, ValueError) as exc:  # a closed stream: the line is a courtesy, the start goes on
            _log.debug("isolated_env: could not print the progress line: %r", exc)

    timer = threading.Timer(SLOW_START_S, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def started(kind: str, pid: int, info: dict[str, Any], state_dir: Path, startup_ms: float) -> None:
    """The line for a server this process started."""
    _log.info(
        "isolated_env: started the embedded %s server %s (pid %d) in %.0f ms: binary %s, state dir %s, log %s",
        kind, info.get("version", "?"), pid, startup_ms, info.get("binary", "?"), state_dir, info.get("log", "?"),
    )


def joined(kind: str, pid: int, info: dict[str, Any]) -> None:
    """The line for a server another process had started."""
    _log.debug("isolated_env: joined the running embedded %s server %s (pid %d), log %s",
               kind, info.get("version", "?"), pid, info.get("log", "?"))


def reaped(kind: str, removed: Sequence[str], why: str) -> None:
    """The line for what a reap removed (nothing is said when it removed nothing)."""
    if removed:
        _log.info("isolated_env: removed %s (%s): %s", ", ".join(removed), kind, why)
