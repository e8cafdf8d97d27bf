import pytest
from app import Base
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateTable

import isolated_env as ie

# The models' DDL as the template: built once, rebuilt when a model changes.
SCHEMA = ie.PostgresTemplate(name="app", sql=";\n".join(
    str(CreateTable(table).compile(dialect=postgresql.dialect())) for table in Base.metadata.sorted_tables
))


@pytest.fixture
async def db(isolated_env):
    return await isolated_env.enter(ie.isolated_postgres(template=SCHEMA))


@pytest.fixture
async def session(db):
    async def the_test_connection():
        return db.connection

    # The test's own connection, inside its transaction: the app's commit() releases a savepoint,
    # and everything is rolled back when the test ends. Never engine.dispose(): that would close it.
    engine = create_async_engine("postgresql+asyncpg://", async_creator=the_test_connection, poolclass=StaticPool)
    async with AsyncSession(engine, expire_on_commit=False) as session:
        yield session
