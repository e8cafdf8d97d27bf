"""How an in-process server's problems are told: briefly, once, with where a handler failed."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from typing import Any, cast

from .._errors import ResourceCheckFailed

__all__ = ["short", "where"]


def short(error: ResourceCheckFailed) -> ResourceCheckFailed:
    """Under pytest, the same error, reported by its message alone.

    The problems listed are the whole story; a traceback through the server's teardown (anyio's
    runner, the environment, the resource) would bury a two-line problem under a hundred lines.
    pytest prints an error that is also its ``pytest.fail.Exception`` with ``pytrace=False`` (what
    ``pytest.fail(msg, pytrace=False)`` raises) as its message only
    (``--fulltrace`` still shows everything). Outside pytest it is the plain error."""
    # pytest.fail.Exception is the documented name of what pytest.fail() raises
    failed = getattr(getattr(sys.modules.get("pytest"), "fail", None), "Exception", None)
    if not isinstance(failed, type) or not issubclass(failed, BaseException):
        return error
    short: ResourceCheckFailed = _short_type(cast(Any, failed))(*error.args)
    setattr(short, "msg", str(error))  # noqa: B010 - pytest's Failed reads these two
    setattr(short, "pytrace", False)  # noqa: B010
    return short


@functools.cache
def _short_type(failed: Any) -> type[ResourceCheckFailed]:
    namespace = {"__module__": ResourceCheckFailed.__module__, "__str__": BaseException.__str__,
                 "__repr__": BaseException.__repr__}
    return type("ResourceCheckFailed", (ResourceCheckFailed, failed), namespace)


def where(exc: BaseException) -> str:
    """Where ``exc`` was raised (its innermost frame), for a one-line account of a handler error."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    path = frame.filename
    with contextlib.suppress(ValueError):  # another drive (Windows): keep it absolute
        relative = os.path.relpath(path)
        path = path if relative.startswith("..") else relative
    return f"{path}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
