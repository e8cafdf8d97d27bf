"""The version gate every private seam goes through."""

from __future__ import annotations

import pytest

from isolated_env._drivers import _seams
from isolated_env._drivers._seams import matches, parse_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.30.0", (0, 30, 0)), ("4.11.0rc1", (4, 11, 0)), ("26", (26,)), ("1.2.post3", (1, 2))],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("0.30.0", ">=0.29,<0.33", True),
        ("0.33.0", ">=0.29,<0.33", False),
        ("0.28.9", ">=0.29", False),
        ("4.11", ">=4.11.0", True),
        ("1.0", "==1", True),
    ],
)
def test_matches(version: str, spec: str, expected: bool) -> None:
    assert matches(version, spec) is expected


def test_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="bad version clause"):
        matches("1.0", "~=1.0")


def test_tested_knows_installed_and_missing_distributions() -> None:
    assert _seams.tested("anyio", ">=1")
    assert not _seams.tested("anyio", "<1")
    assert not _seams.tested("no-such-distribution-isolated-env", ">=0")
