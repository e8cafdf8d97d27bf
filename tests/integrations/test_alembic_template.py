"""PostgresTemplate.from_alembic: its hash follows the migrations, and a changed migration rebuilds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import isolated_env as ie
from isolated_env import sync

pytest.importorskip("alembic")
pytest.importorskip("sqlalchemy.ext.asyncio")
pytest.importorskip("greenlet")
psycopg = pytest.importorskip("psycopg")

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "integrations" / "alembic"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(PROJECT, tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "app"


def test_hash_covers_the_ini_and_every_migration(project: Path) -> None:
    ini = project / "alembic.ini"
    first = ie.PostgresTemplate.from_alembic(ini)
    assert ie.PostgresTemplate.from_alembic(ini).digest == first.digest  # nothing changed
    (project / "migrations" / "__pycache__").mkdir(exist_ok=True)
    (project / "migrations" / "__pycache__" / "env.cpython.pyc").write_bytes(b"noise")
    assert ie.PostgresTemplate.from_alembic(ini).digest == first.digest  # bytecode is not content
    assert ie.PostgresTemplate.from_alembic(ini, revision="0001").digest != first.digest
    migration = project / "migrations" / "versions" / "0002_orders.py"
    migration.write_text(migration.read_text().replace('"orders"', '"purchases"'))
    assert ie.PostgresTemplate.from_alembic(ini).digest != first.digest
    (project / "migrations" / "versions" / "0003_more.py").write_text("# a new migration\n")
    assert len({t.digest for t in (first, ie.PostgresTemplate.from_alembic(ini))}) == 2


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_a_changed_migration_builds_a_new_template(project: Path) -> None:
    ini = project / "alembic.ini"
    with sync.isolated_postgres(template=ie.PostgresTemplate.from_alembic(ini)) as db:
        assert _tables(db.dsn) == {"alembic_version", "users", "orders"}
    migration = project / "migrations" / "versions" / "0002_orders.py"
    migration.write_text(migration.read_text().replace('"orders"', '"purchases"'))
    with sync.isolated_postgres(template=ie.PostgresTemplate.from_alembic(ini)) as db:
        assert _tables(db.dsn) == {"alembic_version", "users", "purchases"}


def test_a_failing_migration_is_a_template_error_with_alembics_output(project: Path) -> None:
    migration = project / "migrations" / "versions" / "0002_orders.py"
    migration.write_text(migration.read_text().replace('"users.id"', '"nowhere.id"'))
    template = ie.PostgresTemplate.from_alembic(project / "alembic.ini")
    with pytest.raises(ie.TemplateError, match="alembic upgrade head") as info:
        with sync.isolated_postgres(template=template):
            pass
    assert "nowhere" in str(info.value)


def test_an_ini_without_script_location_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    with pytest.raises(ie.ConfigError, match="script_location"):
        ie.PostgresTemplate.from_alembic(tmp_path / "alembic.ini")
