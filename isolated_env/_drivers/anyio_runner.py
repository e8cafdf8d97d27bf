"""The one private seam of anyio we use: its pytest plugin's shared test runner.

anyio's pytest plugin makes an event loop per test unless a runner is already leased;
holding a lease between tests (``get_runner``, reference-counted) keeps one loop for the session,
so pooled connections survive from test to test. ``get_runner`` is not public API, so it is used
here only, on the versions it was tested with; elsewhere tests get anyio's loop per test (slower,
correct).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from . import _seams

__all__ = ["TESTED", "hold_runner", "runner_key"]

TESTED = ">=4.0,<5"
log = logging.getLogger("isolated_env")


def runner_key(anyio_backend: Any) -> tuple[str, str]:
    """Which runner ``anyio_backend`` asks for (backend name and options)."""
    from anyio.pytest_plugin import extract_backend_and_options

    name, options = extract_backend_and_options(anyio_backend)
    return name, json.dumps(options, sort_keys=True, default=str)


def hold_runner(anyio_backend: Any) -> tuple[tuple[str, str], contextlib.ExitStack] | None:
    """Lease anyio's test runner for ``anyio_backend`` until the returned stack is closed; None
    when the installed anyio is outside the tested range (each test then gets its own loop)."""
    if not _seams.tested("anyio", TESTED):
        log.warning(
            "isolated_env: anyio %s is outside the tested range %s; event loops are not kept between "
            "tests, so each test opens its own connections", _seams.installed_version("anyio"), TESTED,
        )
        return None
    from anyio.pytest_plugin import extract_backend_and_options, get_runner

    name, options = extract_backend_and_options(anyio_backend)
    stack = contextlib.ExitStack()
    stack.enter_context(get_runner(name, options))
    return runner_key(anyio_backend), stack
