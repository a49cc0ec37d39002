import datetime as dt

import pytest
from sqlalchemy import update

from support import records
from xrayvision.db import repo
from xrayvision.db.models import DONE, ERROR, QUEUED, STATUSES, AuditLog, Exam, Patient, utcnow
from xrayvision.db.repo import ExamFilter, ExamInfo, PatientInfo


def add(db, uid, *, cnp="1900101123456", name="Popescu Ion", status=DONE, region="chest",
        created=None, ai=None, rad=None):
    def _add(session):
        exam, created_now = records.add_exam(
            session, ExamInfo(uid=uid, region=region, status=status, modality="DX"),
            PatientInfo(cnp=cnp, name=name) if cnp else None,
        )
        if created is not None:
            exam.created = created
        if ai is not None:
            records.save_ai_report(session, uid, **ai)
        if rad is not None:
            repo.save_rad_report(session, uid, **rad)
        return created_now
    return db.write_sync(_add)


def test_add_exam_is_idempotent_per_sop_instance_uid(db):
    assert add(db, "1.2.3") is True
    assert add(db, "1.2.3", region="hand") is False
    assert db.read_sync(records.count_exams) == 1
    row = db.read_sync(repo.get_exam, "1.2.3")
    assert row.exam.region == "chest" and row.patient.name == "Popescu Ion"


def test_insert_received_creates_once_and_a_duplicate_changes_nothing(db):
    exam = ExamInfo(uid="1.9.1", region="chest", modality="DX")
    first = PatientInfo(cnp="3", name="Ana", birth_date=dt.date(1980, 5, 1))
    assert db.write_sync(repo.insert_received, exam, first) is True
    again = PatientInfo(cnp="3", name="Someone Else", sex="F")
    assert db.write_sync(repo.insert_received, exam, again) is False
    row = db.read_sync(repo.get_exam, "1.9.1")
    assert (row.exam.status, row.exam.cnp) == ("none", "3")
    assert (row.patient.name, row.patient.birth_date, row.patient.sex) == (
        "Ana", dt.date(1980, 5, 1), "")
    assert db.read_sync(repo.exam_exists, "1.9.1") is True
    assert db.read_sync(repo.exam_exists, "1.9.2") is False


def test_get_exam_unknown_is_none(db):
    assert db.read_sync(repo.get_exam, "9.9") is None


def test_patient_upsert_fills_missing_and_keeps_known(db):
    db.write_sync(repo.upsert_patient, PatientInfo(cnp="2", name="Ana"))
    db.write_sync(repo.upsert_patient, PatientInfo(cnp="2", birth_date=dt.date(1980, 5, 1),
                                                   sex="F"))
    patient = db.read_sync(lambda s: s.get(Patient, "2"))
    assert (patient.name, patient.birth_date, patient.sex) == ("Ana", dt.date(1980, 5, 1), "F")


def test_exam_without_patient(db):
    add(db, "1.5", cnp="")
    row = db.read_sync(repo.get_exam, "1.5")
    assert row.exam.cnp is None and row.patient is None


def test_datetimes_round_trip_as_aware_utc(db):
    when = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    add(db, "1.6", created=when)
    created = db.read_sync(repo.get_exam, "1.6").exam.created
    assert created == when and created.tzinfo is not None
    assert created.utcoffset() == dt.timedelta(0)


def test_reports_insert_update_and_unknown_fields(db):
    add(db, "1.7", ai={"text": "FINDINGS: none", "severity": 2, "confidence": 80})
    db.write_sync(records.save_ai_report, "1.7", severity=7, summary="effusion")
    ai = db.read_sync(records.get_ai_report, "1.7")
    assert (ai.text, ai.severity, ai.confidence, ai.summary) == ("FINDINGS: none", 7, 80,
                                                                 "effusion")
    db.write_sync(repo.save_rad_report, "1.7", text="Fără modificări", text_en="No changes",
                  severity=1, radiologist="Dr. Ionescu")
    rad = db.read_sync(records.get_rad_report, "1.7")
    assert rad.text == "Fără modificări" and rad.positive == -1
    with pytest.raises(ValueError, match="unknown ai_reports fields: colour"):
        db.write_sync(repo.save_ai_read, "1.7", colour="red", threshold=5)


def test_report_ranges_are_enforced_by_the_database(db):
    from sqlalchemy.exc import IntegrityError

    add(db, "1.8")
    with pytest.raises(IntegrityError):
        db.write_sync(repo.save_ai_read, "1.8", severity=11, threshold=5)


def test_set_status(db):
    add(db, "1.9", status="none")
    assert db.write_sync(records.set_status, "1.9", QUEUED) is True
    assert db.write_sync(records.set_status, "9.9", QUEUED) is False
    with pytest.raises(ValueError):
        db.write_sync(records.set_status, "1.9", "lost")
    assert db.read_sync(repo.exams_with_status, QUEUED) == ["1.9"]


@pytest.fixture
def populated(db):
    t0 = utcnow() - dt.timedelta(days=10)
    rows = [
        # uid, cnp, name, status, region, day, ai severity, rad severity, reviewed
        ("10.1", "1800101000001", "Popescu Ion", DONE, "chest", 0, 8, 7, True),    # TP
        ("10.2", "1800101000001", "Popescu Ion", DONE, "chest", 1, 1, 0, False),   # TN
        ("10.3", "2900202000002", "Ionescu Maria", DONE, "hand", 2, 6, 2, False),  # FP
        ("10.4", "2900202000002", "Ionescu Maria", DONE, "hand", 3, 3, 9, True),   # FN
        ("10.5", "1700303000003", "Vasile_Ana%", DONE, "chest", 4, -1, 5, False),  # not assessed
        ("10.6", "1700303000003", "Vasile_Ana%", QUEUED, "chest", 5, None, None, None),
        ("10.7", "", "", ERROR, "foot", 6, None, None, None),
    ]
    for uid, cnp, name, status, region, day, ai_sev, rad_sev, reviewed in rows:
        add(db, uid, cnp=cnp, name=name, status=status, region=region,
            created=t0 + dt.timedelta(days=day),
            ai=None if ai_sev is None else {"severity": ai_sev, "reviewed": reviewed,
                                              "positive": 1 if ai_sev >= 5 else 0},
            rad=None if rad_sev is None else {"severity": rad_sev})
    return db, t0


def uids(page):
    return [r.exam.uid for r in page.rows]


def test_list_exams_newest_first_with_total(populated):
    db, _ = populated
    page = db.read_sync(repo.list_exams)
    assert uids(page) == ["10.7", "10.6", "10.5", "10.4", "10.3", "10.2", "10.1"]
    assert page.total == 7 and page.pages == 1
    assert page.rows[0].patient is None and page.rows[1].ai is None


def test_list_exams_pagination_and_cap(populated):
    db, _ = populated
    second = db.read_sync(repo.list_exams, ExamFilter(), 2, 3)
    assert uids(second) == ["10.4", "10.3", "10.2"] and second.total == 7 and second.pages == 3
    capped = db.read_sync(repo.list_exams, ExamFilter(), 1, 10_000)
    assert capped.size == repo.MAX_PAGE_SIZE
    assert db.read_sync(repo.list_exams, ExamFilter(), 0, 0).page == 1


@pytest.mark.parametrize("flt,expected", [
    (ExamFilter(statuses=(QUEUED, ERROR)), ["10.7", "10.6"]),
    (ExamFilter(region="hand"), ["10.4", "10.3"]),
    (ExamFilter(severity_min=5), ["10.3", "10.1"]),
    (ExamFilter(severity_min=0, severity_max=3), ["10.4", "10.2"]),
    (ExamFilter(positive=1), ["10.3", "10.1"]),
    (ExamFilter(reviewed=True), ["10.4", "10.1"]),
    (ExamFilter(reviewed=False, region="chest"), ["10.5", "10.2"]),
    (ExamFilter(search="29002"), ["10.4", "10.3"]),  # patient id prefix
    (ExamFilter(search="ionescu"), ["10.4", "10.3"]),  # name, case-insensitive
    (ExamFilter(search="_Ana%"), ["10.6", "10.5"]),  # LIKE wildcards taken literally
    (ExamFilter(search="%"), ["10.6", "10.5"]),
    (ExamFilter(agreement="TP"), ["10.1"]),
    (ExamFilter(agreement="TN"), ["10.2"]),
    (ExamFilter(agreement="fp"), ["10.3"]),
    (ExamFilter(agreement="FN"), ["10.4"]),
    (ExamFilter(agreement="TP", threshold=9), []),  # nobody has both severities >= 9
    (ExamFilter(agreement="TN", threshold=9), ["10.3", "10.2", "10.1"]),
])
def test_list_exams_filters(populated, flt, expected):
    db, _ = populated
    page = db.read_sync(repo.list_exams, flt)
    assert uids(page) == expected
    assert page.total == len(expected)


def test_list_exams_date_range(populated):
    db, t0 = populated
    page = db.read_sync(repo.list_exams, ExamFilter(since=t0 + dt.timedelta(days=2),
                                                    until=t0 + dt.timedelta(days=4)))
    assert uids(page) == ["10.4", "10.3"]


@pytest.mark.parametrize("flt,message", [
    (ExamFilter(statuses=("lost",)), "unknown status"),
    (ExamFilter(agreement="XX"), "agreement must be one of"),
])
def test_list_exams_bad_filters(db, flt, message):
    with pytest.raises(ValueError, match=message):
        db.read_sync(repo.list_exams, flt)


def test_queue_counts_and_oldest_claimable(populated):
    db, t0 = populated
    counts = db.read_sync(repo.queue_counts)
    assert set(counts) == set(STATUSES)
    assert counts[DONE] == 5 and counts[QUEUED] == 1 and counts[ERROR] == 1 and counts["none"] == 0
    assert db.read_sync(repo.oldest_claimable) == t0 + dt.timedelta(days=5)


def test_audit_rows(db):
    db.write_sync(repo.audit, "login", username="alice", remote="10.0.0.1", detail="ok")
    rows = db.read_sync(lambda s: s.query(AuditLog).all())
    assert [(r.action, r.username, r.remote) for r in rows] == [("login", "alice", "10.0.0.1")]


def test_purge_error_exams_removes_old_errors_with_reports(db):
    old = utcnow() - dt.timedelta(days=40)
    add(db, "11.1", status=ERROR, rad={"text": "x"})
    add(db, "11.2", status=ERROR)
    add(db, "11.3", status=DONE)
    add(db, "11.4", status=ERROR, ai={"text": "x", "review_correct": 0})  # read, reviewed
    db.write_sync(lambda s: s.query(Exam).update({Exam.updated: old}))
    db.write_sync(records.set_status, "11.2", ERROR, "fresh error")  # updated now
    purged = db.write_sync(repo.purge_error_exams, utcnow() - dt.timedelta(days=30))
    assert purged == ["11.1"]
    assert db.read_sync(repo.get_exam, "11.1") is None
    assert db.read_sync(records.get_rad_report, "11.1") is None
    # an exam with an AI read of its own is kept: the read and its review are never lost
    assert db.read_sync(records.get_ai_report, "11.4").review_correct == 0
    assert db.read_sync(records.count_exams) == 3


def test_exams_received_before_pages_by_uid(db):
    old = utcnow() - dt.timedelta(days=5)
    for uid in ("12.1", "12.2", "12.3"):
        add(db, uid, created=old)
    add(db, "12.4")
    cutoff = utcnow() - dt.timedelta(days=1)
    first = db.read_sync(repo.exams_received_before, cutoff, "", 2)
    rest = db.read_sync(repo.exams_received_before, cutoff, first[-1], 2)
    assert first + rest == ["12.1", "12.2", "12.3"]


def test_report_context(db):
    add(db, "13.1", ai={"text": "FINDINGS: old"})
    add(db, "13.2", cnp="")
    ctx = db.read_sync(repo.report_context, "13.1")
    assert (ctx.uid, ctx.region, ctx.cnp, ctx.patient_name) == (
        "13.1", "chest", "1900101123456", "Popescu Ion")
    assert ctx.previous_report == "FINDINGS: old" and ctx.created.tzinfo is not None
    bare = db.read_sync(repo.report_context, "13.2")
    assert bare.patient_name == "" and bare.previous_report == "" and bare.cnp is None
    assert db.read_sync(repo.report_context, "9.9") is None


def test_urgent_first_order_critical_filter_and_retriage(db):
    """Critical and not reviewed first (severity at the threshold or stat priority), then
    priority, severity, newest; a review takes an exam out of the critical group; the
    other sorts; a changed threshold reorders after retriage."""
    t0 = dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
    exams = [  # uid, priority, severity (None: not read yet), minutes after t0
        ("1.1", 0, 2, 0), ("1.2", 0, 8, 1), ("1.3", 3, None, 2), ("1.4", 0, 6, 3),
        ("1.5", 1, 1, 4), ("1.6", 0, 9, 5), ("1.7", 0, None, 6)]
    for uid, priority, severity, minute in exams:
        db.write_sync(repo.insert_received, ExamInfo(uid=uid, region="chest", status=DONE,
                                                     priority=priority))
        db.write_sync(lambda s, uid=uid, m=minute: s.execute(update(Exam).where(
            Exam.uid == uid).values(created=t0 + dt.timedelta(minutes=m))))
        if severity is not None:
            db.write_sync(repo.save_ai_read, uid, severity=severity, text="x", threshold=5)

    def order(**kw):
        rows = db.read_sync(repo.exam_page, ExamFilter(threshold=5, **kw), 1, 50)
        return [r.exam.uid for r in rows]

    # critical: 1.3 (stat, unread), then 1.6 (9), 1.2 (8), 1.4 (6); then priority 1.5; the
    # rest by severity (1.1 read 2, 1.7 unread -1)
    assert order() == ["1.3", "1.6", "1.2", "1.4", "1.5", "1.1", "1.7"]
    assert order(critical=True) == ["1.3", "1.6", "1.2", "1.4"]
    assert db.write_sync(repo.review_ai_report, "1.6", correct=True, note="", username="a") == 1
    assert order(critical=True) == ["1.3", "1.2", "1.4"]
    assert order()[:4] == ["1.3", "1.2", "1.4", "1.5"]  # reviewed: with the others
    assert order(sort="received") == ["1.7", "1.6", "1.5", "1.4", "1.3", "1.2", "1.1"]
    assert order(sort="severity") == ["1.6", "1.2", "1.4", "1.1", "1.5", "1.7", "1.3"]
    assert order(sort="priority")[:2] == ["1.3", "1.5"]
    assert db.read_sync(repo.count_matching, ExamFilter(critical=True)) == 3
    # A new read of a reviewed exam is unreviewed again: critical again.
    db.write_sync(repo.save_ai_read, "1.6", severity=9, text="y", threshold=5)
    assert order(critical=True) == ["1.3", "1.6", "1.2", "1.4"]
    # Threshold 7: 1.4 (6) is no longer critical; 1.3 stays (stat).
    assert db.write_sync(repo.retriage, 7) == 1
    assert order(critical=True) == ["1.3", "1.6", "1.2"]
    assert db.write_sync(repo.retriage, 7) == 0  # nothing left to change
    with pytest.raises(ValueError, match="unknown sort"):
        db.read_sync(repo.exam_page, ExamFilter(sort="alphabetical"))


@pytest.mark.parametrize("counted,page,size,shown,total", [
    (0, 1, 50, 2, 2),      # the cached count lags two new exams: the page says 2
    (9, 1, 50, 2, 2),      # some were purged since: exact again
    (4, 2, 2, 2, 4),       # a full page: the count stands
    (3, 2, 2, 2, 4),       # ... or at least what the pages shown hold
    (10, 4, 2, 0, 6),      # past the end: no more than the pages before
    (0, 1, 50, 0, 0),
])
def test_shown_total_never_contradicts_the_page(counted, page, size, shown, total):
    assert repo.shown_total(counted, page, size, shown) == total
