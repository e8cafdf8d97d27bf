"""An async env.py, as Alembic's asyncio template has it: the migrations run under asyncio.run()."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url"))
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


asyncio.run(run_async_migrations())
