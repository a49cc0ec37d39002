"""Alembic environment: the engine comes from ``config.attributes`` (see migrate.py)."""

from alembic import context
from sqlalchemy.engine import Connection

from xrayvision.db.models import Base

config = context.config
engine = config.attributes["engine"]


def _foreign_keys(connection: Connection, on: bool) -> None:
    """Through the DB-API connection: SQLAlchemy's own execute would begin a transaction
    first, and SQLite ignores this pragma inside one."""
    cursor = connection.connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    cursor.close()


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A batch migration copies a table and drops the old one; with foreign keys on,
        # that drop would cascade to the rows that reference it (every report of the
        # exams). Off for the migration (outside any transaction, where SQLite honours
        # it), on again before the connection goes back to the pool.
        _foreign_keys(connection, False)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    try:
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()
            _foreign_keys(connection, True)
