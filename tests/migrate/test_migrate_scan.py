"""migrate scan: every form of the labelled corpus, names resolved through imports, the report's
parts (mock-only tests, unresolved targets, replacements) and its three formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _labels import CORPUS, evaluate, expected

from isolated_env.migrate import scan
from isolated_env.migrate._report import render, sarif

FORMS = ["unittest_mock_forms.py", "pytest_forms.py", "fakes_and_recorders.py", "nested_and_classes.py"]


@pytest.mark.parametrize("name", FORMS)
def test_every_form_of_the_corpus_is_found_and_classified(name: str) -> None:
    result = evaluate([CORPUS / name])
    assert result.expected, "the corpus file has labels"
    assert sorted(result.expected - result.reported) == [], "missed or misclassified"
    assert sorted(result.reported - result.expected) == [], "reported where no site is"


def test_the_whole_corpus_is_classified_with_high_precision_and_recall() -> None:
    # realistic_suite.py was labelled before the classifier saw it: it may miss, but little
    result = evaluate()
    assert len(result.expected) > 100
    assert result.precision >= 0.95 and result.recall >= 0.95, (
        sorted(result.expected - result.reported),
        sorted(result.reported - result.expected),
    )


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


APP = {
    "app/__init__.py": "",
    "app/service.py": "from asyncpg import connect\nfrom .store import Store\n\nclass Local:\n    def run(self): ...\n",
    "app/store.py": "import redis\n\nclass Store:\n    def get(self): ...\n",
}


def test_string_targets_are_resolved_statically_and_the_dead_ones_reported(tmp_path: Path) -> None:
    tests = """\
from unittest.mock import patch

@patch("app.service.connect")
@patch("app.service.Store.get")
@patch("app.store.redis.Redis.get")
@patch("app.service.Local.missing")
@patch("app.service.nothing")
@patch("nosuchpackage.thing")
def test_x(*mocks):
    assert len(mocks) == 6
"""
    root = _project(tmp_path, {**APP, "tests/test_x.py": tests})
    report = scan([root / "tests"])
    services = {s.line: s.service for s in report.sites}
    assert services[3] == "postgres"  # app.service.connect is asyncpg's: known only through the import
    dead = {u.target: u.reason for u in report.unresolved()}
    assert dead == {
        "app.service.Local.missing": "class app.service.Local has no attribute 'missing'",
        "app.service.nothing": "module app.service has no attribute 'nothing'",
        "nosuchpackage.thing": "no module named 'nosuchpackage' in the project or installed",
    }
    assert report.totals()["resolution"].startswith("static")
    assert scan([root / "tests"], resolve=False).unresolved() == []


def test_tests_that_assert_only_on_mocks_are_listed(tmp_path: Path) -> None:
    tests = """\
from unittest.mock import patch

def test_only_calls():
    with patch("app.store.redis.Redis.set") as set_:
        set_.assert_called_once_with("k", "v")
        assert set_.call_count == 1

def test_state_too(mocker):
    get = mocker.patch("app.store.Store.get", return_value=3)
    assert get() == 3
    get.assert_called_once()

def test_raises_is_a_state_assert():
    import pytest
    with patch("app.store.Store.get", side_effect=KeyError), pytest.raises(KeyError):
        raise KeyError
"""
    root = _project(tmp_path, {**APP, "tests/test_y.py": tests})
    only = scan([root]).totals()["mock_only_tests"]
    assert [(t["test"], t["call_asserts"]) for t in only] == [("test_only_calls", 2)]


def test_json_has_exactly_sites_and_totals(tmp_path: Path) -> None:
    shutil.copy(CORPUS / "pytest_forms.py", tmp_path / "test_forms.py")
    data = json.loads(render(scan([tmp_path]), "json"))
    assert set(data) == {"sites", "totals"}
    assert data["sites"] and all(set(s) == {"path", "line", "kind", "service", "test"} for s in data["sites"])
    totals = data["totals"]
    assert (
        totals["sites"] == len(data["sites"]) == sum(totals["by_service"].values()) == sum(totals["by_kind"].values())
    )
    assert totals["by_file"] == {data["sites"][0]["path"]: len(data["sites"])}
    assert totals["by_test"][f"{data['sites'][0]['path']}::test_monkeypatch"] == 10
    assert totals["replacements"]["redis"].startswith("isolated_redis")
    assert totals["replacements"]["clock"].startswith("keep")


def test_sarif_is_2_1_0_with_a_result_per_finding(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        {
            **APP,
            "tests/test_z.py": "from unittest.mock import patch\n\n"
            "def test_z():\n    with patch('app.gone') as g:\n        g.assert_called()\n",
        },
    )
    report = scan([root])
    doc = sarif(report)
    assert doc["version"] == "2.1.0"
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert len(run["results"]) == len(report.sites) + 1 + 1  # a site, its dead target, a mock-only test
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert region["startLine"] >= 1
    assert {r["ruleId"] for r in run["results"]} == {"mock-internal", "unresolved-target", "mock-only-test"}


def test_the_table_says_what_replaces_each_service(tmp_path: Path) -> None:
    shutil.copy(CORPUS / "fakes_and_recorders.py", tmp_path / "test_fakes.py")
    labels = expected(CORPUS / "fakes_and_recorders.py")
    redis = sum(1 for label in labels if label[3] == "redis")
    text = render(scan([tmp_path]), "table")
    assert text.splitlines()[0].startswith(f"{len(labels)} mock sites in 1 of 1 test files")
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in text.split("\n\n")[1].splitlines()[2:]}
    assert rows["redis"] == [
        str(redis),
        "isolated_redis (redis.asyncio API) or isolated_redis_url (redis.Redis.from_url)",
    ]
    assert rows["clock"][1].startswith("keep")
    assert "tests that assert only on mocks (call asserts, no state asserts): 1\n  test_fakes.py:" in text.replace(
        str(tmp_path) + "/", ""
    )
    assert " test_respx (1 call asserts)" in text


def test_a_large_tree_is_scanned_in_parallel_with_the_same_result(tmp_path: Path) -> None:
    for i in range(80):
        shutil.copy(CORPUS / FORMS[i % len(FORMS)], tmp_path / f"test_{i}.py")
    serial, parallel = scan([tmp_path], jobs=1), scan([tmp_path], jobs=2)
    assert parallel.as_json() == serial.as_json()
    assert len(serial.files) == 80


def test_only_test_files_are_scanned_and_bad_ones_reported(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text("from unittest.mock import MagicMock\nm = MagicMock()\n")
    (tmp_path / "test_broken.py").write_text("def test_x(:\n    mock = 1\n")
    report = scan([tmp_path])
    assert [f.path.rsplit("/", 1)[-1] for f in report.files] == ["test_broken.py"]
    assert report.totals()["errors"][0]["error"].startswith("cannot parse")
    with pytest.raises(FileNotFoundError, match="give test files or directories"):
        scan([tmp_path / "missing"])
