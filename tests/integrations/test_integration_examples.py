"""The integration examples (examples/integrations/*), each a small user project run by pytest as
its users would run it; skipped where the framework is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "integrations"


def run_project(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TEST_POSTGRES"))}
    env.pop("CI", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error"],
        cwd=EXAMPLES / name, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return result.stdout


def test_sqlalchemy_async_on_the_transaction_mode_connection() -> None:
    pytest.importorskip("sqlalchemy.ext.asyncio")
    pytest.importorskip("greenlet")
    assert "3 passed" in run_project("sqlalchemy_async")


def test_sqlalchemy_sync_and_psycopg_on_database_mode() -> None:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    assert "3 passed" in run_project("sqlalchemy_sync")


def test_alembic_migrations_as_a_template() -> None:
    pytest.importorskip("alembic")
    pytest.importorskip("sqlalchemy.ext.asyncio")
    pytest.importorskip("greenlet")
    pytest.importorskip("psycopg")
    assert "4 passed" in run_project("alembic")


def test_django_test_database_from_isolated_env() -> None:
    pytest.importorskip("django")
    pytest.importorskip("pytest_django")
    pytest.importorskip("psycopg")
    assert "4 passed" in run_project("django")
