"""migrate ratchet: a count that grows fails, one that shrinks passes and says how to lock it in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isolated_env._errors import ConfigError
from isolated_env.cli import main
from isolated_env.migrate._ratchet import load_baseline

ONE = "from unittest.mock import patch\n\ndef test_a():\n    with patch('os.getcwd'):\n        assert True\n"
TWO = ONE + "\ndef test_b(mocker):\n    mocker.patch('redis.Redis.get')\n    assert True\n"


def _ratchet(tmp_path: Path, *extra: str) -> int:
    return main(["migrate", "ratchet", str(tmp_path / "tests"), "--baseline", str(tmp_path / "base.json"), *extra])


def test_a_new_mock_fails_the_ratchet_and_a_removed_one_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_x.py").write_text(ONE)
    assert _ratchet(tmp_path, "--update") == 0
    baseline = json.loads((tmp_path / "base.json").read_text())
    assert baseline["sites"] == 1 and baseline["by_service"] == {"filesystem": 1}
    assert _ratchet(tmp_path) == 0
    assert "no count grew: 1 sites" in capsys.readouterr().out

    (tests / "test_x.py").write_text(TWO)
    assert _ratchet(tmp_path) == 1
    captured = capsys.readouterr()
    assert "grew: sites: 1 -> 2" in captured.out
    assert "grew: by_service[redis]: 0 -> 1" in captured.out
    assert "grew: by_kind[mocker.patch]: 0 -> 1" in captured.out
    assert "the ratchet holds: 4 count(s) grew" in captured.err  # sites, kind, service, file

    assert _ratchet(tmp_path, "--update") == 0
    (tests / "test_x.py").write_text(ONE)
    assert _ratchet(tmp_path) == 0
    out = capsys.readouterr().out
    assert "shrank: by_service[redis]: 1 -> 0" in out and "--update" in out


def test_a_missing_or_broken_baseline_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tests").mkdir()
    assert _ratchet(tmp_path) == 2
    assert "write one with `isolated-env migrate ratchet --baseline" in capsys.readouterr().err
    (tmp_path / "base.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_baseline(tmp_path / "base.json")
    (tmp_path / "base.json").write_text("{}")
    with pytest.raises(ConfigError, match="lacks sites, mock_only_tests, unresolved_targets"):
        load_baseline(tmp_path / "base.json")


def test_scan_shows_each_count_against_a_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(ONE)
    assert _ratchet(tmp_path, "--update") == 0
    (tmp_path / "tests" / "test_x.py").write_text(TWO)
    capsys.readouterr()
    assert main(["migrate", "scan", str(tmp_path / "tests"), "--baseline", str(tmp_path / "base.json")]) == 0
    out = capsys.readouterr().out
    assert "service     sites  vs baseline  replace with" in out
    assert out.rstrip().endswith("sites vs baseline: +1")
