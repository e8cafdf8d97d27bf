"""Move a mock-based test suite onto real services: ``isolated-env migrate scan | ratchet | rewrite``.

- :func:`scan` finds every mock, patch, fake and stand-in (LibCST, names resolved through imports)
  and says which service each one stands in for;
- :func:`ratchet` compares a scan with a baseline, so a migration only goes one way;
- :func:`rewrite` replaces the fakes whose real API is identical, keeping a change only when the
  rewritten test passes.

Nothing here is imported by ``import isolated_env``; LibCST is the ``migrate`` extra.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ratchet", "rewrite", "scan"]


def __getattr__(name: str) -> Any:
    if name == "scan":
        from ._scan import scan

        return scan
    if name == "ratchet":
        from ._ratchet import ratchet

        return ratchet
    if name == "rewrite":
        from ._rewrite import rewrite

        return rewrite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
