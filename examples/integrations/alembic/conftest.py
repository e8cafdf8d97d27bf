from pathlib import Path

import pytest

from isolated_env import PostgresTemplate

# Built once by `alembic upgrade head`; rebuilt when alembic.ini or a migration changes.
SCHEMA = PostgresTemplate.from_alembic(Path(__file__).parent / "alembic.ini")


@pytest.fixture
def isolated_database_template():
    return SCHEMA
