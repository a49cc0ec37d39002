"""SQLAlchemy 2 declarative models; the Alembic history under ``migrations/`` matches them.

Field ranges: positive -1/0/1, severity -1..10, confidence
-1..100 (-1 = not assessed); exam statuses in :data:`STATUSES`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Exam statuses: received, waiting, being sent to the model, finished,
# failed for good, unsupported region, manually re-queued.
NONE, QUEUED, PROCESSING, DONE, ERROR, IGNORE, REQUEUE = (
    "none", "queued", "processing", "done", "error", "ignore", "requeue",
)
STATUSES = (NONE, QUEUED, PROCESSING, DONE, ERROR, IGNORE, REQUEUE)
CLAIMABLE = (QUEUED, REQUEUE)

# Why an exam is ``ignore`` or ``error`` (``exams.reason_code``; ``exams.error`` holds the
# plain-language reason): no region rule matched its text; the received DICOM is gone
# from the store; its pixels cannot be converted; the model refused the request (4xx);
# the model never answered a chat completion; the PNG is gone; the relay reading it
# stopped (crash, lost lease) too often; any other failure of a read.
REASON_CODES = ("no_region_rule", "dicom_missing", "decode_failed", "model_rejected",
                "model_bad_output", "image_missing", "worker_lost", "read_failed")

STAT = 3  # config.PRIORITIES["stat"]: critical whatever the model says


# Literal SQL shared by the partial indexes and the queries that must match them.
CLAIMABLE_SQL = text("status IN ('queued', 'requeue')")
PROCESSING_SQL = text("status = 'processing'")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _own_uid(context: Any) -> str:
    """An exam's read is its own until a study read covers it."""
    return str(context.get_current_parameters()["uid"])


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC and made aware again when read. Naive values are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None,
                           dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None,
                             dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patients"

    cnp: Mapped[str] = mapped_column(String(64), primary_key=True)  # patient id (CNP)
    name: Mapped[str] = mapped_column(String(256), default="")
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1), default="")  # M, F, O or ""
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Exam(Base):
    __tablename__ = "exams"

    uid: Mapped[str] = mapped_column(String(64), primary_key=True)  # SOP Instance UID
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    accession: Mapped[str] = mapped_column(String(64), default="")
    cnp: Mapped[str | None] = mapped_column(ForeignKey("patients.cnp", ondelete="SET NULL"))
    modality: Mapped[str] = mapped_column(String(16), default="")
    # The SOP Class UID as received (the AI read's DICOM SR references the image by it).
    sop_class: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # Patient's Name as received (DICOM PN, ``^`` between components), for what we send
    # back to the PACS; ``patients.name`` is the display form.
    patient_name: Mapped[str] = mapped_column(String(256), default="", server_default="")
    region: Mapped[str] = mapped_column(String(64), default="")
    projection: Mapped[str] = mapped_column(String(64), default="")
    protocol: Mapped[str] = mapped_column(String(256), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    study_description: Mapped[str] = mapped_column(String(256), default="")
    series_description: Mapped[str] = mapped_column(String(256), default="")
    series_datetime: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=NONE)
    # The read that covers this image: its own UID (read per image) or its study's key
    # (read per study: ``Study.uid``); ``ai_reports.uid`` is one of the two.
    read_uid: Mapped[str] = mapped_column(String(64), default=_own_uid, server_default="")
    # The worklist's urgent-first order, kept with the exam so that one index serves it:
    # the current AI read's severity (-1: none), whether it was reviewed, and triage 1
    # while the exam is critical (severity at or above the threshold, or stat priority)
    # and not reviewed (``repo.reports.critical``).
    severity: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    triage: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str] = mapped_column(Text, default="")  # the reason, in plain language
    reason_code: Mapped[str] = mapped_column(String(32), default="", server_default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # retry after a failure
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(
            "status IN ('none', 'queued', 'processing', 'done', 'error', 'ignore', 'requeue')",
            name="status",
        ),
        Index("ix_exams_status_created", "status", "created"),
        Index("ix_exams_region_created", "region", "created"),
        # Counting a region's exams in some statuses (the list's total) from the index.
        Index("ix_exams_region_status", "region", "status"),
        Index("ix_exams_created", "created"),
        Index("ix_exams_cnp", "cnp"),
        Index("ix_exams_study_uid", "study_uid"),
        # The worklist, urgent first (read backwards: every key descending).
        Index("ix_exams_triage", "triage", "priority", "severity", "created", "uid"),
        # ... of one region (the dashboard's most common filter): no sort of the region's
        # exams (SQLite took 0.4 s at a million exams without it, bench/README.md).
        Index("ix_exams_region_triage", "region", "triage", "priority", "severity", "created",
              "uid"),
        # The claim query's exact shape: highest priority first, then the oldest.
        Index(
            "ix_exams_claim",
            text("priority DESC"),
            "created",
            postgresql_where=CLAIMABLE_SQL,
            sqlite_where=CLAIMABLE_SQL,
        ),
        Index(
            "ix_exams_lease",
            "lease_expires",
            postgresql_where=PROCESSING_SQL,
            sqlite_where=PROCESSING_SQL,
        ),
    )


class Study(Base):
    """A study (Study Instance UID) rolled up from its images, and, read per study, the
    unit the model reads (its read queue: the same lease columns as :class:`Exam`, used by
    ``db/queue.py``). Kept by ``repo.refresh_study`` when an image's conversion ends."""

    __tablename__ = "studies"

    # The Study Instance UID; an instance without one is a study of its own (its SOP
    # Instance UID).
    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    cnp: Mapped[str | None] = mapped_column(ForeignKey("patients.cnp", ondelete="SET NULL"))
    accession: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(256), default="")
    regions: Mapped[str] = mapped_column(String(256), default="")  # "chest" or "chest,hand"
    views: Mapped[str] = mapped_column(String(256), default="")  # the images' projections
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    study_datetime: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    images: Mapped[int] = mapped_column(Integer, default=0)  # instances received
    readable: Mapped[int] = mapped_column(Integer, default=0)  # converted, a region matched
    status: Mapped[str] = mapped_column(String(16), default=NONE)
    # An image became readable while the study was being read: read it again after.
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    severity: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    triage: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str] = mapped_column(Text, default="")
    reason_code: Mapped[str] = mapped_column(String(32), default="", server_default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Quiet time (no new image before it) or back-off after a failure.
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)  # 1st image
    last_image: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(
            "status IN ('none', 'queued', 'processing', 'done', 'error', 'ignore', 'requeue')",
            name="status",
        ),
        Index("ix_studies_triage", "triage", "priority", "severity", "created", "uid"),
        Index("ix_studies_created", "created"),
        # The dashboard's queue sizes by status, counted from the index (once a second).
        Index("ix_studies_status", "status"),
        Index("ix_studies_cnp", "cnp"),
        Index("ix_studies_accession", "accession"),
        Index("ix_studies_claim", text("priority DESC"), "created",
              postgresql_where=CLAIMABLE_SQL, sqlite_where=CLAIMABLE_SQL),
        Index("ix_studies_lease", "lease_expires",
              postgresql_where=PROCESSING_SQL, sqlite_where=PROCESSING_SQL),
    )


class AIRead:
    """What one AI read is: the report, the CHK result, who answered and how fast (the
    columns the current read and its earlier versions share)."""

    text: Mapped[str] = mapped_column(Text, default="")
    positive: Mapped[int] = mapped_column(Integer, default=-1)
    severity: Mapped[int] = mapped_column(Integer, default=-1)
    confidence: Mapped[int] = mapped_column(Integer, default=-1)
    summary: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(256), default="")
    endpoint: Mapped[str] = mapped_column(String(32), default="")  # primary / secondary
    latency: Mapped[float] = mapped_column(Float, default=0.0)  # seconds


class AIReport(AIRead, Base):
    """The exam's current AI read (the latest version) and the review of it; earlier
    versions are in :class:`AIReportVersion`, every review in :class:`Review`."""

    __tablename__ = "ai_reports"

    # What was read: an exam's SOP Instance UID or a study's key (``exams.read_uid``);
    # no foreign key, as the key may name either.
    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    prompt_version: Mapped[str] = mapped_column(String(16), default="", server_default="")
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False)
    # A radiologist's verdict on this report: 1 correct, 0 incorrect, -1 not reviewed.
    review_correct: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    review_note: Mapped[str] = mapped_column(Text, default="", server_default="")
    reviewed_by: Mapped[str] = mapped_column(String(128), default="", server_default="")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint("positive BETWEEN -1 AND 1", name="positive"),
        CheckConstraint("severity BETWEEN -1 AND 10", name="severity"),
        CheckConstraint("confidence BETWEEN -1 AND 100", name="confidence"),
        CheckConstraint("review_correct BETWEEN -1 AND 1", name="review_correct"),
        Index("ix_ai_reports_severity", "severity"),
    )


class AIReportVersion(AIRead, Base):
    """An AI read that a later one replaced (a requeue), kept as it was with the review it
    had: nothing a model or a user produced is deleted by a new read."""

    __tablename__ = "ai_report_versions"

    uid: Mapped[str] = mapped_column(String(64), primary_key=True)  # as AIReport.uid
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_version: Mapped[str] = mapped_column(String(16), default="")
    review_correct: Mapped[int] = mapped_column(Integer, default=-1)
    review_note: Mapped[str] = mapped_column(Text, default="")
    reviewed_by: Mapped[str] = mapped_column(String(128), default="")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # when this read was stored
    superseded: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ShadowRead(AIRead, Base):
    """A shadow model's read of something the live model read (``[ai] shadow_url``):
    stored apart from the AI reads, never shown as one, compared with the live read and
    the radiologist's report per model (``repo.shadow_agreement``)."""

    __tablename__ = "shadow_reads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64))  # as AIReport.uid: what was read
    prompt_version: Mapped[str] = mapped_column(String(16), default="")
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("positive BETWEEN -1 AND 1", name="positive"),
        CheckConstraint("severity BETWEEN -1 AND 10", name="severity"),
        CheckConstraint("confidence BETWEEN -1 AND 100", name="confidence"),
        Index("ix_shadow_reads_uid_model", "uid", "model"),
        Index("ix_shadow_reads_created", "created"),
    )


class Review(Base):
    """Every verdict a radiologist gave on an AI read (the latest one per version is also
    on the report): changing one's mind adds a row."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64))  # as AIReport.uid
    version: Mapped[int] = mapped_column(Integer)  # of the AI read reviewed
    correct: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text, default="")
    username: Mapped[str] = mapped_column(String(128), default="")
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_reviews_uid", "uid"),)


class RadReport(Base):
    __tablename__ = "rad_reports"

    # An exam's SOP Instance UID, or a study's key (the same report, linked to the study:
    # agreement read per study compares it with the study's AI read).
    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    fhir_id: Mapped[str] = mapped_column(String(128), default="")
    fhir_version: Mapped[str] = mapped_column(String(64), default="", server_default="")
    fhir_status: Mapped[str] = mapped_column(String(16), default="", server_default="")
    text: Mapped[str] = mapped_column(Text, default="")
    text_en: Mapped[str] = mapped_column(Text, default="")
    radiologist: Mapped[str] = mapped_column(String(256), default="")
    positive: Mapped[int] = mapped_column(Integer, default=-1)
    severity: Mapped[int] = mapped_column(Integer, default=-1)
    summary: Mapped[str] = mapped_column(Text, default="")
    # False until CHK and TRN have run on this version of the text (model down: retried).
    checked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint("positive BETWEEN -1 AND 1", name="positive"),
        CheckConstraint("severity BETWEEN -1 AND 10", name="severity"),
        Index("ix_rad_reports_fhir_id", "fhir_id"),
        Index("ix_rad_reports_severity", "severity"),
    )


class RadReportVersion(Base):
    """A radiologist report as it was before a later version (amended, corrected) or
    another report replaced it, or before the HIS withdrew it (entered-in-error,
    cancelled): the study page's history; nothing the HIS sent is lost."""

    __tablename__ = "rad_report_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(64))  # as RadReport.uid
    fhir_id: Mapped[str] = mapped_column(String(128), default="")
    fhir_version: Mapped[str] = mapped_column(String(64), default="")
    fhir_status: Mapped[str] = mapped_column(String(16), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    text_en: Mapped[str] = mapped_column(Text, default="")
    radiologist: Mapped[str] = mapped_column(String(256), default="")
    positive: Mapped[int] = mapped_column(Integer, default=-1)
    severity: Mapped[int] = mapped_column(Integer, default=-1)
    summary: Mapped[str] = mapped_column(Text, default="")
    checked: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # when it was stored
    ended: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # replaced (a new version or another report) or withdrawn (entered-in-error, cancelled)
    ended_by: Mapped[str] = mapped_column(String(16))

    __table_args__ = (Index("ix_rad_report_versions_uid", "uid"),)


class FhirUnlinked(Base):
    """A report the FHIR poller found for one of our patients and could not link to a
    study (no rule fits, or it fits several studies), with why: listed for the admins
    until a later cycle links it."""

    __tablename__ = "fhir_unlinked"

    fhir_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    cnp: Mapped[str] = mapped_column(String(64))
    accessions: Mapped[str] = mapped_column(String(256), default="")  # its and its order's
    rule: Mapped[str] = mapped_column(String(16))  # none, ambiguous
    reason: Mapped[str] = mapped_column(Text, default="")
    effective: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_fhir_unlinked_last_seen", "last_seen"),)


# Where an AI read is sent (``result_outbox.destination``) and what became of a send.
DEST_DICOM, DEST_FHIR = "dicom", "fhir"
DESTINATIONS = (DEST_DICOM, DEST_FHIR)
PENDING, SENT, DEAD, SUPERSEDED = "pending", "sent", "dead", "superseded"


class ResultOutbox(Base):
    """An AI read (``uid`` and ``version``, with review ``review`` of it, 0 for none) to
    send to one destination: written in the transaction that stored the read or the
    review, so nothing is sent that was not stored and nothing stored is left unsent.
    The sender claims a row with a lease (the exam queue's columns), sends, and marks it
    ``sent``; a failure is retried after ``not_before`` (back-off) until ``attempts``
    reaches ``[results] max_attempts``, then it is ``dead`` with ``error`` (an admin may
    send it again). A newer row for the same read and destination makes an unsent one
    ``superseded``: what the hospital has is always the latest."""

    __tablename__ = "result_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(16))
    uid: Mapped[str] = mapped_column(String(64))  # as AIReport.uid
    version: Mapped[int] = mapped_column(Integer)
    review: Mapped[int] = mapped_column(Integer, default=0)  # reviews.id; 0: the read
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'dead', 'superseded')", name="status"),
        CheckConstraint("destination IN ('dicom', 'fhir')", name="destination"),
        # The sender's claim: pending rows due first, oldest first.
        Index("ix_result_outbox_due", "status", "not_before", "id"),
        Index("ix_result_outbox_uid", "uid", "destination"),
    )


class Image(Base):
    """Image bytes when ``[images] backend = database`` (kind: png, dcm)."""

    __tablename__ = "images"

    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A relay process that may hold exams; its heartbeat says it is alive."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    username: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), default="")
    remote: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_audit_log_ts", "ts"),)


class Retrieval(Base):
    """A study pulled from the PACS by query/retrieve: ``done`` studies are not pulled
    again; ``failed`` ones are retried on the next run."""

    __tablename__ = "retrievals"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class State(Base):
    """Small named values that must survive restarts (e.g. the last successful query)."""

    __tablename__ = "state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# What a tally counts (``tallies.kind``): AI reads; studies and images with an AI read or a
# checked radiologist report (the units agreement compares, read per study or per image).
TALLY_READ, TALLY_STUDY, TALLY_IMAGE = "read", "study", "image"
TALLY_NONE = -2  # ``ai``/``rad`` of a unit without that report


class Tally(Base):
    """A running count of the global statistics: how many units of ``kind`` received on
    ``day`` (UTC) have these values (AI and radiologist severity, review verdict,
    endpoint), with their model latencies summed. Kept by ``repo.restate_tallies`` in
    the transaction of every write that changes them; the statistics sum days of these
    instead of joining every report with its exam or study."""

    __tablename__ = "tallies"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    ai: Mapped[int] = mapped_column(Integer, primary_key=True)
    rad: Mapped[int] = mapped_column(Integer, primary_key=True)
    review: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(32), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
    latency: Mapped[float] = mapped_column(Float, default=0.0)  # seconds, summed


class TallyFact(Base):
    """What one unit (an AI read, a study, an image) adds to :class:`Tally` now: the
    bucket it is counted in and its latency, so that a change moves it from its old
    bucket to its new one."""

    __tablename__ = "tally_facts"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date)
    ai: Mapped[int] = mapped_column(Integer)
    rad: Mapped[int] = mapped_column(Integer)
    review: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(32))
    latency: Mapped[float] = mapped_column(Float)


class WebSession(Base):
    """A dashboard sign-in (a cookie): kept by its token's SHA-256 only, the token itself
    is never stored; ``csrf`` is what the page must echo on every change it asks for."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    csrf: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_web_sessions_last_seen", "last_seen"),)
