"""The app commits; the test's transaction still rolls it all back."""

import pytest
from app import emails, register
from sqlalchemy.exc import IntegrityError


async def test_register_commits(session, db):
    await register(session, "ada@example.com")
    assert await emails(session) == ["ada@example.com"]
    # the raw connection sees the committed row: same transaction
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_the_previous_commit_was_rolled_back(session):
    assert await emails(session) == []


async def test_a_failed_commit_rolls_back_to_the_savepoint_only(session):
    await register(session, "ada@example.com")
    with pytest.raises(IntegrityError):
        await register(session, "ada@example.com")
    await session.rollback()
    assert await emails(session) == ["ada@example.com"]
