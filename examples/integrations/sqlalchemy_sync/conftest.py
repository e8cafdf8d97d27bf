import pytest
from app import Base
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

import isolated_env as ie

SCHEMA = ie.PostgresTemplate(name="app_sync", sql=";\n".join(
    str(CreateTable(table).compile(dialect=postgresql.dialect())) for table in Base.metadata.sorted_tables
))


@pytest.fixture
def isolated_database_template():
    return SCHEMA  # what isolated_database_dsn clones


@pytest.fixture
def session(isolated_database_dsn):
    engine = create_engine(isolated_database_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    with Session(engine) as session:
        yield session
    engine.dispose()
