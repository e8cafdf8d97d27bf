import pytest
from shop import orders
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool


@pytest.fixture
def conn():
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    orders.metadata.create_all(engine)
    with engine.begin() as connection:
        yield connection
    engine.dispose()


def test_totals_add_up(conn):
    orders.place(conn, "apple", 2)
    orders.place(conn, "apple", 3)
    orders.place(conn, "pear", 1)
    assert orders.total(conn, "apple") == 5


def test_an_unknown_item_totals_zero(conn):
    assert orders.total(conn, "plum") == 0
