"""Migrations from an empty database; models and history agree (no autogenerate drift)."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from xrayvision.db import migrate
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        scratch = Database(DatabaseOptions(url=url))
        with scratch.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            name = f"mig_{abs(hash(request.node.nodeid)) % 10**8}"
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        scratch.close()
        url = url.rsplit("/", 1)[0] + "/" + name
    db = Database(DatabaseOptions(url=url))
    yield db
    db.close()


def test_upgrade_from_empty_creates_every_table(empty_db):
    state = migrate.schema_state(empty_db.engine)
    assert not state.is_current and state.current == ()
    assert "run `xrayvision migrate`" in state.describe()
    state = migrate.upgrade(empty_db.engine)
    assert state.is_current
    tables = set(inspect(empty_db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_models_and_migrations_agree(empty_db):
    migrate.upgrade(empty_db.engine)
    sqlite = empty_db.is_sqlite

    def include(obj, name, type_, reflected, compare_to):
        # Alembic cannot reflect SQLite's expression index (priority DESC) and would report
        # it as changed; PostgreSQL compares it fully, and the next test checks it exists.
        return not (sqlite and type_ == "index" and name == "ix_exams_claim")

    with empty_db.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(empty_db):
    migrate.upgrade(empty_db.engine)
    migrate.upgrade(empty_db.engine)  # idempotent at head
    from alembic import command

    command.downgrade(migrate.alembic_config(empty_db.engine), "base")
    assert "exams" not in inspect(empty_db.engine).get_table_names()
    assert migrate.upgrade(empty_db.engine).is_current


def test_claim_index_exists_with_its_predicate(empty_db):
    migrate.upgrade(empty_db.engine)
    names = {ix["name"] for ix in inspect(empty_db.engine).get_indexes("exams")}
    assert {"ix_exams_claim", "ix_exams_lease", "ix_exams_status_created",
            "ix_exams_region_created", "ix_exams_created", "ix_exams_cnp"} <= names


def test_0007_carries_reviews_and_reasons_over(empty_db):
    """Data written before 0007: a reviewed AI report's review becomes its first recorded
    review (version 1); error and ignore exams get a reason code from their text."""
    from alembic import command
    from sqlalchemy import text

    command.upgrade(migrate.alembic_config(empty_db.engine), "0006")
    now = "2026-11-30 10:00:00"
    with empty_db.engine.begin() as c:
        for uid, status, error in (("1.1", "done", ""), ("1.2", "error", "conversion failed: x"),
                                   ("1.3", "error", "ModelRejected: primary answered HTTP 400"),
                                   ("1.4", "ignore", ""), ("1.5", "error", "lease expired: w")):
            c.execute(text(
                "INSERT INTO exams (uid, study_uid, series_uid, accession, modality, region, "
                "projection, protocol, body_part, study_description, series_description, "
                "calling_aet, priority, status, error, attempts, created, updated) VALUES "
                "(:uid, '', '', '', 'CR', 'chest', '', '', '', '', '', '', 0, :status, "
                ":error, 0, :now, :now)"), {"uid": uid, "status": status, "error": error,
                                             "now": now})
        c.execute(text(
            "INSERT INTO ai_reports (uid, text, positive, severity, confidence, summary, model, "
            "endpoint, latency, reviewed, review_correct, review_note, reviewed_by, "
            "reviewed_at, created, updated) VALUES ('1.1', 'FINDINGS: x', 1, 7, 80, 's', 'm', "
            "'primary', 1.5, :t, 0, 'missed it', 'dr.a', :now, :now, :now)"),
            {"now": now, "t": True})
    migrate.upgrade(empty_db.engine)
    with empty_db.engine.connect() as c:
        reviews = c.execute(text("SELECT uid, version, correct, note, username FROM reviews"
                                 )).all()
        report = c.execute(text("SELECT version, prompt_version, text FROM ai_reports")).one()
        reasons = dict(c.execute(text("SELECT uid, reason_code FROM exams")).all())
    assert [tuple(r) for r in reviews] == [("1.1", 1, False, "missed it", "dr.a")]
    assert tuple(report) == (1, "", "FINDINGS: x")
    assert reasons == {"1.1": "", "1.2": "decode_failed", "1.3": "model_rejected",
                       "1.4": "no_region_rule", "1.5": "worker_lost"}
    with empty_db.engine.connect() as c:
        order = c.execute(text("SELECT uid, severity, reviewed, triage FROM exams "
                               "WHERE uid = '1.1'")).one()
    assert tuple(order) == ("1.1", 7, True, 0)  # copied from its report (reviewed)
    # Down again and up: the reports survive (SQLite's batch copies must not cascade).
    command.downgrade(migrate.alembic_config(empty_db.engine), "0006")
    migrate.upgrade(empty_db.engine)
    with empty_db.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM ai_reports")).scalar() == 1
        if empty_db.is_sqlite:  # and the application's connections still enforce them
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
