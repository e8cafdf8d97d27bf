"""``migrate ratchet``: a migration only goes one way. The baseline holds the counts of a scan; a
later scan fails when any count grew (a new mock, a new file with mocks, one more service mocked)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .._errors import ConfigError

__all__ = ["Verdict", "load_baseline", "ratchet", "write_baseline"]

_SECTIONS = ("by_kind", "by_service", "by_file")
_SCALARS = ("sites", "mock_only_tests", "unresolved_targets")


@dataclasses.dataclass(frozen=True)
class Verdict:
    grew: list[str]  # "by_service[redis]: 3 -> 4"
    shrank: list[str]

    @property
    def ok(self) -> bool:
        return not self.grew


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no baseline at {path}; write one with `isolated-env migrate ratchet --baseline {path} --update`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the baseline {path} is not JSON ({exc}); rewrite it with --update") from None
    if not isinstance(data, dict) or not all(k in data for k in _SCALARS):
        raise ConfigError(f"the baseline {path} lacks {', '.join(_SCALARS)}; rewrite it with --update")
    return data


def write_baseline(path: Path, counts: dict[str, Any]) -> None:
    path.write_text(json.dumps({k: counts[k] for k in (*_SCALARS, *_SECTIONS)}, indent=2, sort_keys=True) + "\n")


def ratchet(counts: dict[str, Any], baseline: dict[str, Any]) -> Verdict:
    """Compare a scan's counts (``Report.counts()``) with a baseline."""
    grew: list[str] = []
    shrank: list[str] = []
    for key in _SCALARS:
        was, now = int(baseline.get(key, 0)), int(counts[key])
        (grew if now > was else shrank if now < was else []).append(f"{key}: {was} -> {now}")
    for section in _SECTIONS:
        before = baseline.get(section, {})
        for key in sorted(set(before) | set(counts[section])):
            was, now = int(before.get(key, 0)), int(counts[section].get(key, 0))
            (grew if now > was else shrank if now < was else []).append(f"{section}[{key}]: {was} -> {now}")
    return Verdict(grew, shrank)
