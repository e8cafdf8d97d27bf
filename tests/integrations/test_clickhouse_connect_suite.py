"""clickhouse-connect's own integration suite against the chdb adaptor.

The whole suite takes longer than this project's test run should (several minutes on 2 cores), so
CI runs it as a step of its own: ``make clickhouse-suite`` (``.ci/run``), with
:mod:`clickhouse_connect_suite`. Here: the expected-failures file is well formed and names real
tests with an engine reason, and the comparison fails on a new failure and on an expected failure
that passes. ``ISOLATED_ENV_CLICKHOUSE_SUITE=1`` runs the whole suite here too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

_HERE = Path(__file__).with_name("clickhouse_connect_suite.py")


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("clickhouse_connect_suite", _HERE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


suite = _runner()

_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.integration_tests.test_client" name="test_ping[sync]"/>
  <testcase classname="tests.integration_tests.test_client" name="test_roles"><failure message="x"/></testcase>
  <testcase classname="tests.integration_tests.test_sqlalchemy.test_ddl" name="test_create"><skipped/></testcase>
  <testcase classname="tests.integration_tests.test_native.TestBlocks" name="test_one"><error message="e"/></testcase>
</testsuite></testsuites>
"""


def test_junit_outcomes_are_keyed_by_test_id(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(_JUNIT)
    assert suite.outcomes(junit) == {
        "test_client.py::test_ping[sync]": "passed",
        "test_client.py::test_roles": "failed",
        "test_sqlalchemy/test_ddl.py::test_create": "skipped",
        "test_native.py::TestBlocks::test_one": "failed",
    }


def test_the_expected_failures_file_names_each_engine_reason() -> None:
    expected = suite.expected_failures()
    assert expected, "the file lists the failures the engine causes"
    for test_id, reason in expected.items():
        assert ".py::" in test_id and len(reason) > 15, (test_id, reason)


def test_every_expected_failure_is_in_a_group_the_docs_name() -> None:
    groups = suite.reason_groups()
    assert sorted(t for tests in groups.values() for t in tests) == sorted(suite.expected_failures())
    docs = (Path(__file__).resolve().parents[2] / "docs" / "clickhouse.md").read_text()
    differs = docs.split("## What differs from a real server", 1)[1].split("\n## ", 1)[0].lower()
    missing = [group for group in groups if group.lower() not in differs]
    assert not missing, f"docs/clickhouse.md 'What differs from a real server' does not name: {missing}"


def test_an_entry_outside_a_group_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "expected.txt"
    bad.write_text("# header\ntest_client.py::test_roles  # chdb has no writable access storage\n")
    with pytest.raises(ValueError, match="group"):
        suite.reason_groups(bad)


def test_an_entry_without_a_reason_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "expected.txt"
    bad.write_text("test_client.py::test_roles\n")
    with pytest.raises(ValueError, match="engine reason"):
        suite.expected_failures(bad)


def test_new_failures_and_passing_expected_failures_are_problems() -> None:
    expected = {"test_a.py::test_x": "chdb has no roles"}
    problems = suite.compare({"test_a.py::test_x": "passed", "test_a.py::test_y": "failed"}, expected)
    assert problems == [
        "new failure: test_a.py::test_y",
        "expected to fail, but passed: test_a.py::test_x",
    ]
    assert suite.compare({"test_a.py::test_x": "failed", "test_a.py::test_y": "passed"}, expected) == []
    timing = {"test_a.py::test_x": "timing: a wall-clock bound"}
    assert suite.compare({"test_a.py::test_x": "passed"}, timing) == []
    assert suite.compare({"test_a.py::test_x": "failed"}, timing) == []


@pytest.mark.skipif(os.environ.get("ISOLATED_ENV_CLICKHOUSE_SUITE") != "1", reason="make clickhouse-suite runs it")
def test_the_whole_suite() -> None:
    results, problems = suite.run(workers=2)
    assert not problems, suite.summary(results) + "\n" + "\n".join(problems)
