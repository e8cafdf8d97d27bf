"""Checks of what settings point at: directories whose contents we act on, and variable names."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ._errors import ConfigError

__all__ = ["check_names", "checked_private_dir", "tmpfs_dir"]


def tmpfs_dir(prefix: str) -> Path:
    """``<prefix>-<uid>`` on tmpfs (``/dev/shm``) when there is one, else in the temp directory."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else Path(
        tempfile.gettempdir()
    )
    return base / f"{prefix}-{os.getuid()}"


def checked_private_dir(path: Path, variable: str) -> Path:
    """``path``, created (0711) if missing; a :class:`ConfigError` naming ``variable`` and the fix
    unless it is a directory this user owns, can write, and no other user can write into.

    What a state or cache directory holds is trusted (server directories to remove, pids to signal),
    and the defaults sit in world-writable ``/dev/shm``, where anyone could create them first.
    """
    uid = os.geteuid()
    where = f"{variable} {str(path)!r}"
    try:
        path.mkdir(mode=0o711, parents=True, exist_ok=True)
        link, target = os.lstat(path), os.stat(path)
    except OSError as exc:
        raise ConfigError(
            f"{where} cannot be created or used as a directory ({exc.strerror or exc}); set {variable} to "
            "a directory this user can write, e.g. one under /dev/shm or $HOME"
        ) from None
    if uid not in {link.st_uid, target.st_uid} or link.st_uid != target.st_uid:
        raise ConfigError(
            f"{where} belongs to uid {target.st_uid if target.st_uid != uid else link.st_uid}, not to this user "
            f"(uid {uid}): another user could plant state there that isolated_env would act on; remove it "
            f"(rm -r {path}) if it is stale, or set {variable} to a directory of your own"
        )
    if target.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{where} is writable by other users (mode {stat.S_IMODE(target.st_mode):04o}); run chmod 0711 "
            f"{path}, or set {variable} to a directory only this user can write"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{where} is not writable (a read-only file system?); set {variable} to a writable directory, "
            "e.g. one under /dev/shm"
        )
    if stat.S_IMODE(target.st_mode) != 0o711:
        # 0711: an unprivileged server user (PostgreSQL as root's helper) must traverse it, list nothing.
        os.chmod(path, 0o711)
    return path


def _distance(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            row.append(cost)
        prev2, prev = prev, row
    return prev[-1]


def check_names(names: tuple[str, ...]) -> None:
    """A misspelt variable (``ISOLATED_ENV_REDIS_SEVRER``) would be ignored without a word: refuse
    any ``ISOLATED_ENV_*`` variable that is not one of ``names`` but within two edits of one."""
    known = set(names)
    for name in os.environ:
        if name.startswith("ISOLATED_ENV_") and name not in known:
            near = sorted(k for k in known if _distance(name, k) <= 2)
            if near:
                raise ConfigError(
                    f"{name} is not a setting of isolated_env and would be ignored; did you mean {near[0]}? "
                    "Rename it (docs/configuration.md lists every variable)"
                )
