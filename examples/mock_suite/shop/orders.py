"""Orders, with SQLAlchemy Core: portable SQL only."""

from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50), nullable=False),
    Column("quantity", Integer, nullable=False),
)


def place(conn, item, quantity):
    return conn.execute(insert(orders).values(item=item, quantity=quantity).returning(orders.c.id)).scalar_one()


def total(conn, item):
    query = select(func.coalesce(func.sum(orders.c.quantity), 0)).where(orders.c.item == item)
    return conn.execute(query).scalar_one()
