"""migrate rewrite: a rewrite is kept only when the rewritten test passes against the real service
(pytest runs it), reverted otherwise; what is not identical is left alone with the reason."""

from __future__ import annotations

import difflib
from pathlib import Path

from isolated_env.migrate import rewrite
from isolated_env.migrate._rewrite import _apply

INI = "[pytest]\nanyio_mode = auto\nfilterwarnings =\n    error\n"

MIXED = """\
import fakeredis


def test_counts():
    r = fakeredis.FakeRedis()
    r.incr("n")
    r.incr("n")
    assert int(r.get("n")) == 2
    r.close()


def test_wipes_the_server():
    r = fakeredis.FakeRedis()
    r.flushall()  # another test's data too: the isolated server refuses it
    r.close()
"""


def test_a_passing_rewrite_is_kept_and_a_failing_one_reverted(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    test = tmp_path / "test_mixed.py"
    test.write_text(MIXED)
    result = rewrite([tmp_path])
    assert [(c.line, c.kind) for c in result.kept] == [(5, "fakeredis")]
    assert [(c.line, c.kind) for c in result.reverted] == [(13, "fakeredis")]
    assert "failed" in result.reverted[0].note  # the tail of the pytest run says why
    text = test.read_text()
    assert "def test_counts(isolated_redis_url):\n    r = redis.Redis.from_url(isolated_redis_url)\n" in text
    assert "def test_wipes_the_server():\n    r = fakeredis.FakeRedis()\n" in text
    assert text.startswith("import fakeredis\nimport redis\n")  # fakeredis: still used by the reverted test
    # a second run changes nothing: only the reverted one is still a candidate
    again = rewrite([tmp_path], check=True)
    assert [(c.line, c.kind) for c in again.pending] == [(14, "fakeredis")]  # one line down: `import redis`
    assert test.read_text() == text


SKIPPED = {
    "test_sqlite_only.py": """\
from sqlalchemy import create_engine, text


def test_pragma():
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(text("PRAGMA foreign_keys = ON"))
""",
    "test_fake_only.py": """\
import unittest

import fakeredis

SHARED = fakeredis.FakeRedis()


def test_server():
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert r.ping()


class TestOld(unittest.TestCase):
    def test_method(self):
        r = fakeredis.FakeRedis()
        self.assertTrue(r.ping())


def test_configured(mock_redis):
    mock_redis.get.return_value = b"1"
    assert mock_redis.get("k") == b"1"
""",
}


def test_what_is_not_identical_is_left_alone_with_the_reason(tmp_path: Path) -> None:
    for name, text in SKIPPED.items():
        (tmp_path / name).write_text(text)
    app = tmp_path / "app.py"  # not a test file: never written, even when named
    app.write_text("import fakeredis\nCLIENT = fakeredis.FakeRedis()\n")
    result = rewrite([tmp_path, app])
    assert result.kept == result.reverted == result.pending == []
    why = {(Path(c.path).name, c.line): c.note for c in result.skipped}
    assert why == {
        ("test_sqlite_only.py", 5): "the file holds SQLite-specific SQL ('PRAGMA')",
        ("test_fake_only.py", 5): "at module level: no test or fixture to give the isolated service to",
        ("test_fake_only.py", 9): "passes fakeredis-only argument(s) server",
        ("test_fake_only.py", 15): "in a unittest method: use isolated_env.unittest.IsolatedEnvironmentTestCase",
        (
            "test_fake_only.py",
            19,
        ): "the test configures or asserts on mock_redis as a mock: assert on real state instead",
    }
    assert all((tmp_path / name).read_text() == text for name, text in SKIPPED.items())
    assert app.read_text() == "import fakeredis\nCLIENT = fakeredis.FakeRedis()\n"


def test_a_rewrite_touches_only_what_it_replaces() -> None:
    source = '''\
"""Docstring."""
import os  # a comment
from sqlalchemy import create_engine   # odd spacing kept


@pytest.fixture
def engine(tmp_path,   other=1):
    # why: tests share nothing
    return create_engine("sqlite:///:memory:", echo=True)  # trailing
'''
    code, candidates = _apply(source, None)
    changed = [line for line in difflib.ndiff(source.splitlines(), code.splitlines()) if line[:1] in "+-"]
    assert changed == [
        "- def engine(tmp_path,   other=1):",
        "+ def engine(tmp_path,   isolated_database_dsn, other=1):",
        '-     return create_engine("sqlite:///:memory:", echo=True)  # trailing',
        '+     return create_engine(isolated_database_dsn.replace("postgresql://", "postgresql+psycopg://", 1), '
        "echo=True)  # trailing",
    ]
    assert [c.kind for c in candidates] == ["sqlite-memory"]
    assert _apply(code, None) == (code, [])  # idempotent


def test_a_patched_driver_connect_gets_a_suggested_diff_not_an_edit(tmp_path: Path) -> None:
    test = tmp_path / "test_report.py"
    source = """\
from unittest.mock import patch


@patch("app.report.asyncpg.connect")
async def test_counts(connect):
    connect.return_value.fetchval.return_value = 2
    assert await count() == 2


@patch("app.report.asyncpg.connect")
async def test_only_calls(connect):
    connect.assert_called_once()
"""
    test.write_text(source)
    result = rewrite([tmp_path])
    assert test.read_text() == source
    [suggestion] = result.suggested
    assert suggestion.line == 5 and "test_counts" in suggestion.detail  # the def line
    assert "-async def test_counts(connect):\n+async def test_counts(isolated_database):" in suggestion.note
    assert '-@patch("app.report.asyncpg.connect")' in suggestion.note
