"""The application: synchronous SQLAlchemy 2 models, a service that commits, and a raw psycopg report."""

import psycopg
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


def register(session: Session, email: str) -> User:
    user = User(email=email)
    session.add(user)
    session.commit()
    return user


def emails(session: Session) -> list[str]:
    return list(session.scalars(select(User.email).order_by(User.email)))


def count_users(dsn: str) -> int:
    """Code that opens its own connection from a DSN."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
        return row[0]
