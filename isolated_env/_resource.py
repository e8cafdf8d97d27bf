"""Old home of the resource decorator; the contract now lives in :mod:`._contract`."""

from __future__ import annotations

from ._contract import ResourceContext as Resource
from ._contract import current_settings, resource, restore_settings, with_settings

__all__ = ["Resource", "current_settings", "resource", "restore_settings", "with_settings"]
