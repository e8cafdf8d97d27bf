"""Canary for the chdb adaptor's one private seam and the public chdb API it is built on.

If a test here fails after upgrading chdb or chdb-core, the adaptor's assumptions no longer hold:
read the failure, re-check ``isolated_env/_servers/chdb/engine.py`` against the new release, and
only then widen ``CHDB_TESTED`` / ``CHDB_CORE_TESTED``.

The probes run in one child process: importing chdb starts engine threads that outlive every
connection, and chdb hosts one engine path per process, so the test process stays clear of it.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from isolated_env._drivers import _seams
from isolated_env._servers.chdb import engine
from isolated_env._servers.chdb.protocol import count_statements

pytestmark = pytest.mark.skipif(importlib.util.find_spec("chdb") is None, reason="chdb is not installed")

STATEMENTS = [
    ("SELECT 1", 1),
    ("SELECT 1;", 1),
    ("SELECT 1; SELECT 2", 2),
    ("SELECT ';'; SELECT `;`", 2),
    ("SELECT 1 /* ; SELECT 2 */", 1),
    ("SELECT 1; -- SELECT 2", 1),
]


HEREDOC = "SELECT $$a; b$$"


@pytest.fixture(scope="module")
def child() -> Callable[[str], Any]:
    """What each probe returned in a child process (literals only: nothing of chdb comes back)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    code = f"import {Path(__file__).stem} as probes; print(repr(probes.run_probes()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    seen: dict[str, Any] = ast.literal_eval(out.stdout.strip().splitlines()[-1])

    def result(name: str) -> Any:
        kind, value = seen[name]
        assert kind == "ok", f"probe {name} raised {value}"
        return value

    return result


@contextlib.contextmanager
def _connection(target: str = ":memory:") -> Iterator[Any]:
    import chdb

    connect: Any = chdb.connect
    conn = connect(target)
    try:
        yield conn
    finally:
        conn.close()


# -- probes: run in the child, each returns what it saw or raises AssertionError ------------------


def _classify() -> tuple[bool, Any]:
    with _connection() as conn:
        report = conn._conn.classify_query("SELECT 1; SELECT 2", "")  # what statement_count reaches for
        return isinstance(report, dict), report["statement_count"]


def _engine_counts() -> list[int]:
    with _connection() as conn:
        return [engine.statement_count(conn, sql) for sql, _ in [*STATEMENTS, (HEREDOC, 1)]]


def _error_of_a_bad_query() -> tuple[bool, str]:
    with _connection() as conn:
        try:
            conn.query("SELECT nope", "TabSeparated")
        except Exception as exc:
            return isinstance(exc, RuntimeError), str(exc)
    return False, "no error"


def _result_figures() -> dict[str, Any]:
    with _connection() as conn:
        result = conn.query("SELECT {v:String} FROM numbers(3)", "TabSeparated", params={"v": "a\\tb"})
        names = ("rows_read", "bytes_read", "rows_written", "bytes_written", "elapsed")
        return {"bytes": result.bytes(), **{name: getattr(result, name)() for name in names}}


def _streaming_insert() -> dict[str, Any]:
    with _connection() as conn:
        conn.query("CREATE TABLE t (a Int32) ENGINE = Memory", "TabSeparated")
        inserter = conn.send_insert("INSERT INTO t", "CSV")
        inserter.append(b"1\n2\n")
        done = inserter.finish()
        failed = conn.send_insert("INSERT INTO t", "CSV")
        error = None
        try:
            failed.append(b"not a number\n")
            failed.finish()
        except RuntimeError as exc:
            error = str(exc)
        failed.cancel()
        total = conn.query("SELECT sum(a) FROM t", "TabSeparated").bytes()
        return {
            "rows_written": done.rows_written, "bytes_written": done.bytes_written, "elapsed": done.elapsed,
            "error": error, "total": total,
        }


def _settings_per_connection() -> tuple[bytes, bytes]:
    ask = "SELECT getSetting('max_threads')"
    with _connection() as conn, _connection(":memory:?max_threads=3") as other:
        return other.query(ask, "TabSeparated").bytes(), conn.query(ask, "TabSeparated").bytes()


def run_probes() -> dict[str, tuple[str, Any]]:
    probes = [_classify, _engine_counts, _error_of_a_bad_query, _result_figures, _streaming_insert,
              _settings_per_connection]
    seen: dict[str, tuple[str, Any]] = {}
    for probe in probes:
        try:
            seen[probe.__name__] = ("ok", probe())
        except Exception as exc:  # reported to the test that asked for this probe
            seen[probe.__name__] = ("error", repr(exc))
    return seen


# -- tests ----------------------------------------------------------------------------------------


def test_installed_versions_are_the_tested_ones() -> None:
    for dist, spec in (("chdb", engine.CHDB_TESTED), ("chdb-core", engine.CHDB_CORE_TESTED)):
        version = _seams.installed_version(dist)
        assert _seams.tested(dist, spec), (
            f"{dist} {version} is outside {spec}, the range the adaptor's statement_count seam was tested "
            "on: run this file, check engine.py against the release and widen the range"
        )


def test_the_extension_connection_classifies_statements(child: Callable[[str], Any]) -> None:
    is_dict, count = child("_classify")
    assert is_dict and count == 2 and isinstance(count, int)


def test_the_engine_and_the_fallback_count_alike(child: Callable[[str], Any]) -> None:
    expected = [count for _, count in STATEMENTS]
    assert child("_engine_counts")[: len(STATEMENTS)] == expected
    assert [count_statements(sql) for sql, _ in STATEMENTS] == expected


def test_the_engine_counts_what_the_tokenizer_cannot(child: Callable[[str], Any]) -> None:
    # A heredoc holds a ";" the tokenizer takes for a separator: why the engine's parser is asked.
    assert child("_engine_counts")[-1] == 1
    assert count_statements(HEREDOC) == 2


def test_outside_the_tested_range_the_private_path_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "CHDB_TESTED", "<0")
    # An object without ``_conn``: reaching for it would raise.
    assert engine.statement_count(object(), "SELECT 1; SELECT 2") == 2


def test_errors_are_runtime_errors_with_the_engine_code(child: Callable[[str], Any]) -> None:
    is_runtime_error, text = child("_error_of_a_bad_query")
    assert is_runtime_error, text
    assert "Code: 47. DB::Exception:" in text


def test_results_carry_bytes_and_statistics(child: Callable[[str], Any]) -> None:
    seen = child("_result_figures")
    assert seen["bytes"] == b"a\\tb\n" * 3  # {name:Type} values are parsed in escaped form
    assert seen["rows_read"] == 3 and seen["bytes_read"] > 0
    assert isinstance(seen["rows_written"], int) and isinstance(seen["bytes_written"], int)
    assert isinstance(seen["elapsed"], float)


def test_streaming_inserts_take_format_bytes(child: Callable[[str], Any]) -> None:
    seen = child("_streaming_insert")
    assert (seen["rows_written"], seen["total"]) == (2, b"3\n")
    assert seen["bytes_written"] > 0 and isinstance(seen["elapsed"], float)
    assert seen["error"] is not None and "Code: " in seen["error"]


def test_connection_strings_set_settings_per_connection(child: Callable[[str], Any]) -> None:
    other, own = child("_settings_per_connection")
    assert other == b"3\n" and own != b"3\n"
