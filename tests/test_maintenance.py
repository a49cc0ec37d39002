import dataclasses
import datetime as dt
import sqlite3

from support import records
from xrayvision.config import Settings, load_settings
from xrayvision.db import repo
from xrayvision.db.models import DONE, ERROR, Exam, utcnow
from xrayvision.db.repo import ExamInfo
from xrayvision.images import FilesystemStore
from xrayvision.maintenance import Maintenance, backup_sqlite


def settings_for(tmp_path, **maintenance) -> Settings:
    s = load_settings(tmp_path, env={"XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data")})
    return dataclasses.replace(
        s, maintenance=dataclasses.replace(s.maintenance, **maintenance))


def test_backup_is_a_consistent_copy_and_old_ones_are_rotated(sqlite_db, tmp_path):
    sqlite_db.write_sync(records.add_exam, ExamInfo(uid="1.1", status=DONE))
    source = tmp_path / "test.db"
    made = []
    for i in range(4):
        path, _removed = backup_sqlite(source, tmp_path / "backups", keep=2,
                                       now=utcnow() + dt.timedelta(seconds=i))
        made.append(path)
    remaining = sorted((tmp_path / "backups").glob("*.db"))
    assert remaining == made[-2:]
    with sqlite3.connect(remaining[-1]) as conn:
        assert conn.execute("SELECT uid FROM exams").fetchall() == [("1.1",)]


def test_run_purges_old_errors_with_images_and_applies_image_retention(db, tmp_path):
    store = FilesystemStore(tmp_path / "images")
    old = utcnow() - dt.timedelta(days=60)
    for uid, status in (("2.1", ERROR), ("2.2", ERROR), ("2.3", DONE), ("2.4", DONE)):
        db.write_sync(records.add_exam, ExamInfo(uid=uid, status=status))
        store.put(uid, "png", b"png")
    store.put("2.1", "dcm", b"dcm")
    db.write_sync(lambda s: s.query(Exam).filter(Exam.uid.in_(["2.1", "2.3"]))
                  .update({Exam.updated: old, Exam.created: old}))
    s = settings_for(tmp_path, error_retention_days=30)
    s = dataclasses.replace(s, images=dataclasses.replace(s.images, retention_days=30))
    maintenance = Maintenance(s, db, store)
    report = maintenance.run_once()
    assert report.errors_purged == 1
    assert db.read_sync(repo.get_exam, "2.1") is None
    assert db.read_sync(repo.get_exam, "2.2") is not None  # a recent error stays
    assert store.get("2.1", "dcm") is None and store.get("2.1", "png") is None
    assert store.get("2.3", "png") is None, "old exam's image removed by retention"
    assert db.read_sync(repo.get_exam, "2.3") is not None, "but its row is kept"
    assert store.get("2.4", "png") == b"png"
    assert report.images_removed == 3
    if db.is_sqlite:
        assert report.backup is not None and report.backup.exists()
    else:
        assert report.backup is None  # PostgreSQL backups are the operator's business


def test_run_with_everything_off_removes_nothing(sqlite_db, tmp_path):
    store = FilesystemStore(tmp_path / "images")
    sqlite_db.write_sync(records.add_exam, ExamInfo(uid="3.1", status=ERROR))
    sqlite_db.write_sync(lambda s: s.query(Exam).update(
        {Exam.updated: utcnow() - dt.timedelta(days=900)}))
    report = Maintenance(settings_for(tmp_path, error_retention_days=0, backup_keep=0),
                         sqlite_db, store).run_once()
    assert report.errors_purged == 0 and report.backup is None
    assert sqlite_db.read_sync(records.count_exams) == 1


def test_a_restart_takes_no_extra_backup(sqlite_db, tmp_path):
    """Backups follow the schedule ([maintenance] interval, a day), not starts: a run
    soon after the last backup (a restart) takes none, so backup_keep counts days."""
    store = FilesystemStore(tmp_path / "images")
    s = settings_for(tmp_path, backup_keep=7, error_retention_days=0)
    s = dataclasses.replace(s, database=dataclasses.replace(
        s.database, url=f"sqlite:///{tmp_path / 'test.db'}"))
    now = utcnow()
    first = Maintenance(s, sqlite_db, store).run_once(now)
    assert first.backup is not None
    for minutes in (1, 5, 60):  # three restarts the same day
        again = Maintenance(s, sqlite_db, store).run_once(now + dt.timedelta(minutes=minutes))
        assert again.backup is None
    next_day = Maintenance(s, sqlite_db, store).run_once(now + dt.timedelta(days=1))
    assert next_day.backup is not None
    assert len(list(s.backup_dir.glob("*.db"))) == 2


def test_backup_due_reads_the_newest_of_our_file_names():
    from xrayvision.maintenance import backup_due

    now = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)
    names = ["xrayvision-20261202T120500000000Z.db", "xrayvision-20261203T020000000000Z.db",
             "notes.txt", "xrayvision-garbled.db"]
    assert not backup_due(names, now, 86400)
    assert backup_due(names[:1], now, 86400)  # 23 h 55 min: due (a run's own drift)
    assert backup_due([], now, 86400)
    assert backup_due(["xrayvision-garbled.db"], now, 86400)
