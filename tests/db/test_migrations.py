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
        return not (sqlite and type_ == "index"
                    and name in ("ix_exams_claim", "ix_studies_claim"))

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
    studies = {ix["name"] for ix in inspect(empty_db.engine).get_indexes("studies")}
    assert {"ix_studies_claim", "ix_studies_lease", "ix_studies_triage"} <= studies


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


def test_0008_makes_studies_of_existing_exams(empty_db):
    """Data written before 0008: each study UID becomes a study with its images' rollup
    (an instance without one, a study of its own); exams keep their reads (read_uid is
    their own UID); a study with an image still waiting is queued, one read is done,
    one whose images were all ignored is ignore. Down and up again keeps the reads."""
    from alembic import command
    from sqlalchemy import text

    command.upgrade(migrate.alembic_config(empty_db.engine), "0007")
    with empty_db.engine.begin() as c:
        for uid, study, status, region, projection, priority, t in (
                ("1.1", "2.1", "done", "chest", "PA", 0, "2026-11-30 10:00:00"),
                ("1.2", "2.1", "done", "chest", "LATERAL", 1, "2026-11-30 10:00:05"),
                ("1.3", "2.2", "queued", "hand", "", 0, "2026-11-30 11:00:00"),
                ("1.4", "2.2", "ignore", "", "", 0, "2026-11-30 11:00:01"),
                ("1.5", "2.3", "ignore", "", "", 0, "2026-11-30 12:00:00"),
                ("1.6", "", "error", "chest", "", 0, "2026-11-30 13:00:00")):
            c.execute(text(
                "INSERT INTO exams (uid, study_uid, series_uid, accession, modality, region, "
                "projection, protocol, body_part, study_description, series_description, "
                "calling_aet, priority, status, error, attempts, created, updated, severity, "
                "reviewed, triage, reason_code) VALUES (:uid, :study, '', 'A1', 'CR', "
                ":region, :projection, '', '', 'XR', '', 'ED', :priority, :status, '', 0, "
                ":t, :t, -1, :f, 0, '')"),
                {"uid": uid, "study": study, "status": status, "region": region,
                 "projection": projection, "priority": priority, "t": t, "f": False})
        c.execute(text(
            "INSERT INTO ai_reports (uid, text, positive, severity, confidence, summary, model, "
            "endpoint, latency, reviewed, review_correct, review_note, reviewed_by, "
            "reviewed_at, created, updated, version, prompt_version) VALUES ('1.1', 'x', 1, 7, "
            "80, 's', 'm', 'primary', 1.5, :f, -1, '', '', NULL, :now, :now, 1, '')"),
            {"now": "2026-11-30 10:01:00", "f": False})
        c.execute(text(
            "INSERT INTO rad_reports (uid, fhir_id, fhir_version, fhir_status, text, text_en, "
            "radiologist, positive, severity, summary, checked, created, updated) VALUES "
            "('1.2', 'r1', '1', 'final', 'Pneumonie', '', 'Dr. A', 1, 7, '', :t, :now, :now)"),
            {"now": "2026-11-30 12:00:00", "t": True})
    migrate.upgrade(empty_db.engine)
    with empty_db.engine.connect() as c:
        rad = dict(c.execute(text("SELECT uid, fhir_id FROM rad_reports")).all())
        studies = {r[0]: tuple(r[1:]) for r in c.execute(text(
            "SELECT uid, status, images, readable, regions, priority, accession "
            "FROM studies"))}
        reads = dict(c.execute(text("SELECT uid, read_uid FROM exams")).all())
    assert studies == {"2.1": ("done", 2, 2, "chest", 1, "A1"),
                       "2.2": ("queued", 2, 1, "hand", 0, "A1"),
                       "2.3": ("ignore", 1, 0, "", 0, "A1"),
                       "1.6": ("error", 1, 0, "chest", 0, "A1")}
    assert reads == {u: u for u in ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6")}
    assert rad == {"1.2": "r1", "2.1": "r1"}  # the image's report, linked to its study
    command.downgrade(migrate.alembic_config(empty_db.engine), "0007")
    migrate.upgrade(empty_db.engine)
    with empty_db.engine.begin() as c:
        assert c.execute(text("SELECT count(*) FROM ai_reports")).scalar() == 1
        assert c.execute(text("SELECT count(*) FROM rad_reports")).scalar() == 2
        # a read of a study cannot go down to 0007 (no exam to hang it on): refused
        c.execute(text(
            "INSERT INTO ai_reports (uid, text, positive, severity, confidence, summary, model, "
            "endpoint, latency, reviewed, review_correct, review_note, reviewed_by, "
            "created, updated, version, prompt_version) VALUES ('2.1', 'y', 0, 2, 80, '', "
            "'m', 'primary', 1.0, :f, -1, '', '', :now, :now, 1, '')"),
            {"now": "2026-11-30 10:02:00", "f": False})
    with pytest.raises(RuntimeError, match="AI reads are of studies"):
        command.downgrade(migrate.alembic_config(empty_db.engine), "0007")


def test_0009_counts_the_existing_reports(empty_db):
    """Reports written before 0009 are tallied by the migration as the writes tally them
    from then on: down to 0008 (the tallies dropped) and up again gives the same figures,
    equal to the ones counted from the reports."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import update

    from support import records
    from xrayvision.db import repo, stats
    from xrayvision.db.models import Exam

    migrate.upgrade(empty_db.engine)
    db = empty_db
    for uid, study in (("1.1", "2.1"), ("1.2", "2.1"), ("1.3", "2.2"), ("1.4", "")):
        db.write_sync(records.add_converted, repo.ExamInfo(uid=uid, study_uid=study,
                                                          region="chest", status="queued"))
    db.write_sync(lambda s: s.execute(update(Exam).where(Exam.uid == "1.3").values(
        created=dt.datetime(2026, 11, 1, 23, 30, tzinfo=dt.UTC))))
    db.write_sync(repo.save_study_read, "2.1", ["1.1", "1.2"], threshold=5, severity=7,
                  endpoint="primary", latency=2.0)
    db.write_sync(repo.save_ai_read, "1.3", threshold=5, severity=1, endpoint="secondary",
                  latency=1.0)
    db.write_sync(repo.save_study_read, "1.4", ["1.4"], threshold=5, severity=-1)
    db.write_sync(repo.review_ai_report, "1.2", correct=True, note="", username="r")
    for uid, severity in (("1.1", 8), ("1.3", 0)):
        db.write_sync(repo.save_rad_report, uid, severity=severity, checked=True)
        db.write_sync(repo.link_rad_report, uid, repo.study_key(
            "2.1" if uid == "1.1" else "2.2", uid))

    def figures(per_study):
        return db.read_sync(lambda s: (
            stats.tallied_figures(s, per_study=per_study),
            stats.tallied_figures(s, dt.date(2026, 11, 2), per_study=per_study),
            stats.counted_figures(s, per_study=per_study)))

    before = {p: figures(p) for p in (True, False)}
    command.downgrade(migrate.alembic_config(empty_db.engine), "0008")
    migrate.upgrade(empty_db.engine)
    for per_study in (True, False):
        tallied, recent, counted = figures(per_study)
        assert tallied == before[per_study][0] and recent == before[per_study][1]
        assert (tallied.severity("ai"), tallied.severity("rad"), tallied.pairs,
                tallied.review_counts(), tallied.model()) == (
            counted.severity("ai"), counted.severity("rad"), counted.pairs,
            counted.review_counts(), counted.model())
    assert before[True][0].confusion(5).tp == 1 and before[False][0].confusion(5).tn == 1
    assert before[False][1].severity("ai")[1] == 0  # 1.3 was received on Nov 1st
