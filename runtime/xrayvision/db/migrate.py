"""Alembic migrations, driven from code (``xrayvision migrate``, ``serve --migrate``).

The history lives in ``migrations/versions``; no ``alembic.ini`` is needed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


@dataclass(frozen=True)
class SchemaState:
    current: tuple[str, ...]
    head: tuple[str, ...]

    @property
    def is_current(self) -> bool:
        return set(self.current) == set(self.head)

    def describe(self) -> str:
        if self.is_current:
            return f"schema at {', '.join(self.head)}"
        have = ", ".join(self.current) or "empty database"
        return (
            f"database schema is at {have}, this version needs {', '.join(self.head)}: "
            "run `xrayvision migrate` (or `xrayvision serve --migrate`)"
        )


@functools.cache
def code_heads() -> tuple[str, ...]:
    """The head revision(s) of the migrations shipped with this code (read once: the
    files do not change while the process runs)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return tuple(ScriptDirectory.from_config(cfg).get_heads())


def schema_state(engine: Engine) -> SchemaState:
    """Compares the database's Alembic revision with the code's head (blocking)."""
    head = code_heads()
    with engine.connect() as conn:
        current = tuple(MigrationContext.configure(conn).get_current_heads())
    return SchemaState(current=current, head=head)


def upgrade(engine: Engine, revision: str = "head") -> SchemaState:
    """Migrates the database to ``revision`` (blocking); returns the resulting state."""
    command.upgrade(alembic_config(engine), revision)
    return schema_state(engine)
