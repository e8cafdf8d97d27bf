"""Plain `def` tests, each with a private database: commits are real, and gone after the test."""

import pytest
from app import count_users, emails, register


@pytest.mark.parametrize("email", ["ada@example.com", "grace@example.com"])
def test_register(session, isolated_database_dsn, email):
    assert emails(session) == []  # the other test's commit is not here
    register(session, email)
    assert count_users(isolated_database_dsn) == 1  # another connection sees the commit


def test_psycopg_alone(isolated_database_dsn):
    import psycopg

    with psycopg.connect(isolated_database_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (email) VALUES ('x@example.com')")
    assert count_users(isolated_database_dsn) == 1
