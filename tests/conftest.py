"""Shared fixtures. ``db`` runs a test on SQLite and on the PostgreSQL that `make test`
starts (``XRV_TEST_PG_URL``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import Base

sys.path.insert(0, str(Path(__file__).parent))  # tests/support importable as `support`

from support.pgserver import ENV_VAR  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pg_url_or_fail() -> str:
    url = os.environ.get(ENV_VAR)
    if not url:
        pytest.fail(f"{ENV_VAR} is not set: run the suite with `make test`, which starts a "
                    "throw-away PostgreSQL", pytrace=False)
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def pg_url() -> str:
    return pg_url_or_fail()


@pytest.fixture(scope="session")
def pg_database(pg_url: str):
    db = Database(DatabaseOptions(url=pg_url, pool_size=5))
    upgrade(db.engine)
    yield db
    db.close()


def truncate_all(db: Database) -> None:
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture
def pg_db(pg_database):
    """The shared PostgreSQL database, emptied."""
    truncate_all(pg_database)
    return pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        database = Database(DatabaseOptions(url=f"sqlite:///{tmp_path / 'test.db'}"))
        upgrade(database.engine)
        yield database
        database.close()
    else:
        yield request.getfixturevalue("pg_db")


@pytest.fixture
def sqlite_db(tmp_path):
    database = Database(DatabaseOptions(url=f"sqlite:///{tmp_path / 'test.db'}"))
    upgrade(database.engine)
    yield database
    database.close()


@pytest.fixture
def own_pg():
    """A PostgreSQL server of the test's own (for restarts), with database xrayvision."""
    from support.pgserver import PgServer

    server = PgServer().start()
    server.create_database("xrayvision")
    yield server
    server.destroy()
