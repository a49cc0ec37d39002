"""REST handlers under ``/api``, one function per route; ``setup_api_routes``
registers them. Contract: ``web/openapi.json`` (served at ``/api/spec``; a test keeps the
two equal)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from xrayvision import __version__
from xrayvision.agreement import CLASSES as AGREEMENT_CLASSES
from xrayvision.agreement import PERIODS, Confusion, roll_up
from xrayvision.ai.client import ModelError, ModelUnavailable
from xrayvision.ai.text import TextServices
from xrayvision.config import Settings, mask_url
from xrayvision.db import queue, repo, stats
from xrayvision.db.engine import Database
from xrayvision.db.models import ERROR, IGNORE, STATUSES
from xrayvision.db.repo import ExamFilter, ExamRow, PageRow
from xrayvision.events import EXAM_REQUEUED, EXAM_REVIEWED
from xrayvision.fhir.health import HEALTH_KEY, FhirHealth
from xrayvision.images import InvalidUID, validate_uid
from xrayvision.web.auth import ADMIN, CHECK, READ, REQUEUE, REVIEW, allowed
from xrayvision.web.cache import AggregateCache
from xrayvision.web.context import (
    AUTH,
    CLIENT_IP,
    IDENTITY,
    SERVICES,
    SESSION_CSRF,
    SETTINGS,
    Services,
)
from xrayvision.web.live import Hub

MAX_TEXT = 20000


# --- helpers -------------------------------------------------------------------------------


def bad_request(detail: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=detail)


def require(request: web.Request, permission: str) -> None:
    identity = request[IDENTITY]
    if not allowed(identity.role, permission):
        raise web.HTTPForbidden(
            text=f"role {identity.role!r} may not do this (needs the {permission!r} right)")


def services(request: web.Request) -> Services:
    found = request.app[SERVICES]
    if found.db is None:
        raise web.HTTPServiceUnavailable(text="starting: the database is not connected yet")
    return found


def database(request: web.Request) -> Database:
    db = services(request).db
    assert db is not None
    return db


def _int(query, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise bad_request(f"{name} must be an integer from {lo} to {hi}")
    return value


def _bool(query, name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise bad_request(f"{name} must be true or false")


def _datetime(query, name: str) -> dt.datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date or date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


SEARCH_MAX = 128




def _text(query, name: str, longest: int) -> str:
    value = query.get(name, "").strip()
    if len(value) > longest:
        raise bad_request(f"{name} must be at most {longest} characters")
    return value


def _window(request: web.Request) -> tuple[dt.datetime | None, dt.datetime | None]:
    return _datetime(request.query, "since"), _datetime(request.query, "until")


async def json_body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send the body as application/json")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _text_field(body: dict, name: str = "text") -> str:
    text = body.get(name)
    if not isinstance(text, str) or not text.strip():
        raise bad_request(f"{name} must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise bad_request(f"{name} is longer than {MAX_TEXT} characters")
    return text


def _uid_field(body: dict) -> str:
    uid = body.get("uid")
    try:
        if not isinstance(uid, str):
            raise InvalidUID("not a UID")
        return validate_uid(uid)
    except InvalidUID:
        raise bad_request("uid must be a DICOM UID (digits and dots, at most 64)") from None


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def exam_json(row: ExamRow | PageRow, *, full: bool = False) -> dict[str, Any]:
    e, p, a, r = row
    out: dict[str, Any] = {
        "uid": e.uid, "study_uid": e.study_uid, "accession": e.accession,
        "status": e.status, "region": e.region, "projection": e.projection,
        "modality": e.modality, "priority": e.priority, "created": _iso(e.created),
        # Critical (severity at or above the threshold, or stat) and not reviewed yet.
        "critical_unreviewed": bool(e.triage),
        "series_datetime": _iso(e.series_datetime),
        # Why an exam is ignore or error; "" otherwise.
        "reason_code": e.reason_code if e.status in (IGNORE, ERROR) else "",
        "reason": e.error if e.status in (IGNORE, ERROR) else "",
        "patient": {"cnp": p.cnp, "name": p.name, "sex": p.sex,
                    "birth_date": _iso(p.birth_date)} if p is not None else None,
        "ai": None, "rad": None,
    }
    if a is not None:
        out["ai"] = {"severity": a.severity, "positive": a.positive,
                     "confidence": a.confidence, "summary": a.summary,
                     "reviewed": a.reviewed, "review_correct": a.review_correct,
                     "version": a.version}
        if full:
            out["ai"].update(of="study" if a.uid != e.uid else "image",
                             text=a.text, model=a.model, endpoint=a.endpoint,
                             latency=a.latency, prompt_version=a.prompt_version,
                             review_note=a.review_note, reviewed_by=a.reviewed_by,
                             reviewed_at=_iso(a.reviewed_at), created=_iso(a.created),
                             updated=_iso(a.updated))
    if r is not None:
        out["rad"] = {"severity": r.severity, "positive": r.positive, "summary": r.summary,
                      "radiologist": r.radiologist, "checked": r.checked}
        if full:
            out["rad"].update(text=r.text, text_en=r.text_en, fhir_id=r.fhir_id,
                              fhir_status=r.fhir_status, updated=_iso(r.updated))
    if full:
        out.update(series_uid=e.series_uid, body_part=e.body_part, protocol=e.protocol,
                   study_description=e.study_description,
                   series_description=e.series_description, error=e.error,
                   attempts=e.attempts, calling_aet=e.calling_aet, updated=_iso(e.updated))
    return out


# --- exams and images ----------------------------------------------------------------------


def _list_query(request: web.Request, *,
                agreement: bool = True) -> tuple[ExamFilter, int, int]:
    """The filter, page and size of a list request (``/api/exams``, ``/api/studies``:
    ``agreement`` only for exams); raises 400 for a bad value."""
    q = request.query
    settings = request.app[SETTINGS]
    statuses = tuple(s for s in q.get("status", "").split(",") if s)
    if any(s not in STATUSES for s in statuses):
        raise bad_request(f"status must be among {', '.join(STATUSES)}")
    kind = q.get("agreement", "").upper() if agreement else ""
    if kind and kind not in AGREEMENT_CLASSES:
        raise bad_request(f"agreement must be one of {', '.join(AGREEMENT_CLASSES)}")
    since, until = _window(request)
    sort = q.get("sort", "urgent")
    if sort not in repo.SORTS:
        raise bad_request(f"sort must be one of {', '.join(repo.SORTS)}")
    f = ExamFilter(
        statuses=statuses, region=q.get("region", ""),
        severity_min=_int(q, "severity_min", None, -1, 10),
        severity_max=_int(q, "severity_max", None, -1, 10),
        positive=_int(q, "positive", None, -1, 1), reviewed=_bool(q, "reviewed"),
        since=since, until=until, search=_text(q, "search", SEARCH_MAX), agreement=kind,
        threshold=settings.processing.severity_threshold,
        critical=_bool(q, "critical"), accession=_text(q, "accession", 64),
        modality=_text(q, "modality", 16).upper(), sort=sort,
    )
    page = _int(q, "page", 1, 1, 1_000_000)
    size = _int(q, "size", settings.processing.page_size, 1, repo.MAX_PAGE_SIZE)
    assert page is not None and size is not None  # they have defaults
    return f, page, size


async def list_exams(request: web.Request) -> web.Response:
    require(request, READ)
    f, page, size = _list_query(request)
    db = database(request)

    def read(session):
        rows = repo.exam_page(session, f, page, size)
        return rows, repo.study_sizes(session, [r.exam.study_uid for r in rows])

    rows, sizes = await db.read(read)
    # The total does not depend on the order: one cached count for every sort.
    total = await request.app[TOTALS].get(dataclasses.replace(f, sort=""),
                                          lambda: db.read(repo.count_matching, f))
    result = repo.Page(rows=rows, total=repo.shown_total(total, page, size, len(rows)),
                       page=page, size=size)
    return web.json_response({"exams": [{**exam_json(r),
                                          "study_size": sizes.get(r.exam.study_uid, 1)}
                                         for r in result.rows],
                              "total": result.total, "page": result.page,
                              "size": result.size, "pages": result.pages})


def study_json(row: repo.StudyRow) -> dict[str, Any]:
    s, p, a, r = row
    return {
        "uid": s.uid, "first_image": s.first_image, "accession": s.accession,
        "status": s.status,
        "regions": [r for r in s.regions.split(",") if r],
        "views": [v for v in s.views.split(",") if v], "modality": s.modality,
        "description": s.description, "priority": s.priority, "images": s.images,
        "readable": s.readable, "calling_aet": s.calling_aet,
        "study_datetime": _iso(s.study_datetime), "created": _iso(s.created),
        "last_image": _iso(s.last_image), "critical_unreviewed": bool(s.triage),
        "reason_code": s.reason_code if s.status in (IGNORE, ERROR) else "",
        "reason": s.error if s.status in (IGNORE, ERROR) else "",
        "patient": {"cnp": p.cnp, "name": p.name, "sex": p.sex,
                    "birth_date": _iso(p.birth_date)} if p is not None else None,
        "ai": {"severity": a.severity, "positive": a.positive, "confidence": a.confidence,
               "summary": a.summary, "reviewed": a.reviewed,
               "review_correct": a.review_correct, "version": a.version}
        if a is not None else None,
        "rad": {"severity": r.severity, "positive": r.positive, "summary": r.summary,
                "radiologist": r.radiologist, "checked": r.checked}
        if r is not None else None,
    }


async def list_studies(request: web.Request) -> web.Response:
    """Studies, urgent first by default: the filters and sorts of ``/api/exams`` (but
    ``agreement``); a study's severity is its current AI read's."""
    require(request, READ)
    f, page, size = _list_query(request, agreement=False)
    db = database(request)
    rows = await db.read(repo.study_page, f, page, size)
    total = await request.app[TOTALS].get(("studies", dataclasses.replace(f, sort="")),
                                          lambda: db.read(repo.count_studies, f))
    total = repo.shown_total(total, page, size, len(rows))
    pages = max(1, -(-total // size))
    return web.json_response({"studies": [study_json(r) for r in rows], "total": total,
                              "page": page, "size": size, "pages": pages})


def _path_uid(request: web.Request) -> str:
    try:
        return validate_uid(request.match_info["uid"])
    except InvalidUID:
        raise web.HTTPNotFound(text="no exam with that uid (not a DICOM UID)") from None


def history_json(history: repo.AIHistory) -> dict[str, Any]:
    """Earlier AI reads (each with the review it had when replaced) and every review."""
    return {
        "versions": [{"version": v.version, "text": v.text, "severity": v.severity,
                      "positive": v.positive, "confidence": v.confidence,
                      "summary": v.summary, "model": v.model, "endpoint": v.endpoint,
                      "latency": v.latency, "prompt_version": v.prompt_version,
                      "review_correct": v.review_correct, "review_note": v.review_note,
                      "reviewed_by": v.reviewed_by, "reviewed_at": _iso(v.reviewed_at),
                      "created": _iso(v.created), "superseded": _iso(v.superseded)}
                     for v in history.versions],
        "reviews": [{"version": r.version, "correct": r.correct, "note": r.note,
                     "by": r.username, "at": _iso(r.at)} for r in history.reviews],
    }


async def get_exam(request: web.Request) -> web.Response:
    require(request, READ)
    uid = _path_uid(request)

    def read(session):
        row = repo.get_exam(session, uid)
        if row is None:
            return None
        return (row, repo.ai_history(session, uid),
                repo.study_images(session, row.exam.study_uid), repo.rad_history(session, uid))

    found = await database(request).read(read)
    if found is None:
        raise web.HTTPNotFound(text=f"no exam {uid}")
    row, history, images, rad_history = found
    return web.json_response({
        **exam_json(row, full=True), "history": history_json(history),
        # earlier versions of the radiologist's report, and reports the HIS withdrew
        "rad_history": [{"fhir_id": v.fhir_id, "fhir_version": v.fhir_version,
                         "status": v.fhir_status, "text": v.text, "text_en": v.text_en,
                         "radiologist": v.radiologist, "severity": v.severity,
                         "stored": _iso(v.created), "ended": _iso(v.ended),
                         "ended_by": v.ended_by} for v in rad_history],
        "study_images": [{"uid": i.uid, "projection": i.projection,
                          "series_description": i.series_description, "status": i.status,
                          "severity": i.severity, "created": _iso(i.created)}
                         for i in images]})


async def get_image(request: web.Request) -> web.Response:
    require(request, READ)
    uid = _path_uid(request)
    store = services(request).store
    assert store is not None
    etag = f'"{uid}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    png = await asyncio.to_thread(store.get, uid, "png")
    if png is None:
        raise web.HTTPNotFound(text=f"no image for exam {uid}")
    # An exam's PNG never changes; private: it is patient data.
    return web.Response(body=png, content_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400", "ETag": etag})


# --- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsQuery:
    """What every statistic is computed for: the receipt window, the threshold, and
    whether agreement compares studies (reads per study) or images."""

    since: dt.datetime | None
    until: dt.datetime | None
    threshold: int
    per_study: bool


def stats_query(request: web.Request) -> StatsQuery:
    settings = request.app[SETTINGS]
    since, until = _window(request)
    return StatsQuery(since, until, settings.processing.severity_threshold,
                      settings.ai.read_per == "study")


async def cached(request: web.Request, read):
    """``read(session)`` through the statistics cache, keyed by path and query, in one
    database snapshot: every figure of a response counts the same rows."""
    db = database(request)
    key = (request.path, request.query_string)
    return await request.app[STATS].get(key, lambda: db.snapshot(read))


def global_json(session: Session, q: StatsQuery) -> dict[str, Any]:
    figures = stats.figures(session, q.since, q.until, per_study=q.per_study)
    counts = {"statuses": repo.queue_counts(session)}
    if q.per_study:  # the worklist's unit: what is waiting, read, failed
        counts["study_statuses"] = repo.queue_counts(session, studies=True)
    return {
        "threshold": q.threshold,
        **counts,
        "severity": {"ai": figures.severity("ai"), "rad": figures.severity("rad")},
        "agreement": figures.confusion(q.threshold).as_dict(),
        "reviews": figures.review_counts(),
        "model": figures.model(),
    }


GROUPS = {"region": ("regions", "exams"), "radiologist": ("radiologists", "reports"),
          "model": ("models", "reads")}


def grouped_json(session: Session, q: StatsQuery, group: str) -> dict[str, Any]:
    """Counts and agreement per ``group`` (region, radiologist or model)."""
    listing, count = GROUPS[group]
    counts = stats.counts_by(session, group, q.since, q.until)
    agreement = repo.agreement_counts(session, q.threshold, group, q.since, q.until,
                                      per_study=q.per_study)
    found: dict[str, Any] = {"threshold": q.threshold, listing: [
        {group: key, count: n, "agreement": agreement.get(key, Confusion()).as_dict()}
        for key, n in sorted(counts.items())]}
    if group == "model":  # models under evaluation, never shown as the AI read
        found["shadow"] = [
            {"model": model, "reads": part["reads"],
             **{ref: part[ref].as_dict() for ref in ("radiologist", "live",
                                                     "live_radiologist")}}
            for model, part in repo.shadow_agreement(session, q.threshold, q.since,
                                                     q.until).items()]
    return found


def timeline_json(session: Session, q: StatsQuery, period: str) -> dict[str, Any]:
    days = stats.throughput(session, q.since, q.until)
    agreement = repo.agreement_counts(session, q.threshold, "day", q.since, q.until,
                                      per_study=q.per_study)
    periods: dict[str, dict] = {}
    for day, row in days.items():
        key = roll_up({day: Confusion()}, period).popitem()[0]
        slot = periods.setdefault(key, {"received": 0, "reported": 0})
        slot["received"] += row["received"]
        slot["reported"] += row["reported"]
    rolled = roll_up(agreement, period)
    return {"period": period, "threshold": q.threshold, "timeline": [
        {"start": key, **periods.get(key, {"received": 0, "reported": 0}),
         "agreement": rolled.get(key, Confusion()).as_dict()}
        for key in sorted(set(periods) | set(rolled))]}


def insights_json(session: Session, q: StatsQuery) -> dict[str, Any]:
    """A few derived findings: where the AI misses most, how often reviewers agree with
    it, how fast each endpoint answers."""
    figures = stats.figures(session, q.since, q.until, per_study=q.per_study)
    regions = repo.agreement_counts(session, q.threshold, "region", q.since, q.until,
                                    per_study=q.per_study)
    reviews = figures.review_counts()
    misses = sorted(
        ({"region": k, "false_negatives": v.fn, "sensitivity": v.sensitivity}
         for k, v in regions.items() if v.fn), key=lambda x: -int(x["false_negatives"] or 0))
    reviewed = reviews["correct"] + reviews["incorrect"]
    return {
        "threshold": q.threshold,
        "most_missed_regions": misses[:5],
        "review_agreement": reviews["correct"] / reviewed if reviewed else None,
        "reviews": reviews,
        "model": figures.model(),
    }


TURNAROUND_DAYS = 31  # the window of /api/stats/turnaround without ``since``


def turnaround_json(session: Session, q: StatsQuery) -> dict[str, Any]:
    """Time from receipt to the first AI read, per day of receipt: median and 90th
    percentile (of studies when reads are per study, else of images); without ``since``
    the last :data:`TURNAROUND_DAYS` days."""
    since = q.since
    if since is None:
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - dt.timedelta(days=TURNAROUND_DAYS - 1)
    days = stats.turnaround(stats.first_reads(session, since, q.until,
                                              per_study=q.per_study))
    return {"unit": "study" if q.per_study else "image", "since": _iso(since),
            "days": [{"day": day, **row} for day, row in days.items()]}


def _period(request: web.Request) -> str:
    period = request.query.get("period", "day")
    if period not in PERIODS:
        raise bad_request(f"period must be one of {', '.join(PERIODS)}")
    return period


async def stats_global(request: web.Request) -> web.Response:
    require(request, READ)
    q = stats_query(request)
    return web.json_response(await cached(request, lambda s: global_json(s, q)))


async def _grouped(request: web.Request, group: str) -> web.Response:
    require(request, READ)
    q = stats_query(request)
    return web.json_response(await cached(request, lambda s: grouped_json(s, q, group)))


async def stats_regional(request: web.Request) -> web.Response:
    return await _grouped(request, "region")


async def stats_radiologists(request: web.Request) -> web.Response:
    return await _grouped(request, "radiologist")


async def stats_models(request: web.Request) -> web.Response:
    return await _grouped(request, "model")


async def stats_turnaround(request: web.Request) -> web.Response:
    require(request, READ)
    q = stats_query(request)
    return web.json_response(await cached(request, lambda s: turnaround_json(s, q)))


async def stats_timeline(request: web.Request) -> web.Response:
    require(request, READ)
    period = _period(request)
    q = stats_query(request)
    return web.json_response(await cached(request, lambda s: timeline_json(s, q, period)))


async def stats_insights(request: web.Request) -> web.Response:
    require(request, READ)
    q = stats_query(request)
    return web.json_response(await cached(request, lambda s: insights_json(s, q)))


async def stats_summary(request: web.Request) -> web.Response:
    """Every statistic the dashboard's page shows, from one database snapshot (no figure
    on the page older or newer than another); each part as its own endpoint returns it."""
    require(request, READ)
    period = _period(request)
    q = stats_query(request)

    def read(session: Session) -> dict[str, Any]:
        return {"global": global_json(session, q),
                "regional": grouped_json(session, q, "region"),
                "radiologists": grouped_json(session, q, "radiologist"),
                "models": grouped_json(session, q, "model"),
                "timeline": timeline_json(session, q, period),
                "insights": insights_json(session, q),
                "turnaround": turnaround_json(session, q)}

    return web.json_response(await cached(request, read))


# --- actions -------------------------------------------------------------------------------


async def _model_call(coro):
    try:
        return await coro
    except ModelUnavailable:
        raise web.HTTPServiceUnavailable(
            text="no model endpoint is healthy; try again when one recovers") from None
    except ModelError as exc:
        raise web.HTTPBadGateway(text=f"the model failed: {exc}") from None


def _text_services(request: web.Request) -> TextServices:
    text = services(request).text
    if text is None:
        raise web.HTTPServiceUnavailable(text="no model endpoint is configured")
    return text


async def check(request: web.Request) -> web.Response:
    require(request, CHECK)
    text = _text_field(await json_body(request))
    result = await _model_call(_text_services(request).check_report(text))
    return web.json_response({"positive": result.positive, "severity": result.severity,
                              "confidence": result.confidence, "summary": result.summary})


async def analyse(request: web.Request) -> web.Response:
    require(request, CHECK)
    text = _text_field(await json_body(request))
    passes = await _model_call(_text_services(request).detailed_analysis(text))
    return web.json_response(passes)


async def rad_review(request: web.Request) -> web.Response:
    require(request, REVIEW)
    body = await json_body(request)
    uid = _uid_field(body)
    correct = body.get("correct")
    if not isinstance(correct, bool):
        raise bad_request("correct must be true or false")
    note = body.get("note", "")
    if not isinstance(note, str) or len(note) > 4000:
        raise bad_request("note must be a string of at most 4000 characters")
    identity = request[IDENTITY]
    found = services(request)
    destinations = request.app[SETTINGS].results.enabled

    def write(session):
        version = repo.review_ai_report(session, uid, correct=correct, note=note,
                                        username=identity.username, results=destinations)
        if version is None:
            return None
        repo.audit(session, "review", username=identity.username, target=uid,
                   remote=request[CLIENT_IP],
                   detail=f"{'correct' if correct else 'incorrect'} (version {version})")
        if found.bus is not None:
            found.bus.publish_in(session, EXAM_REVIEWED, uid=uid, correct=correct)
        return version

    assert found.db is not None
    version = await found.db.write(write)
    if version is None:
        raise web.HTTPNotFound(text=f"exam {uid} has no AI report to review")
    return web.json_response({"uid": uid, "correct": correct, "version": version})


async def requeue(request: web.Request) -> web.Response:
    """A new model read of an exam, read per study of its study (the current report
    stays until the new version replaces it); ``region`` sends it as that region (an
    ignored exam, a wrong rule)."""
    require(request, REQUEUE)
    body = await json_body(request)
    uid = _uid_field(body)
    region = body.get("region", "")
    regions = request.app[SETTINGS].regions
    if not isinstance(region, str) or (region and region not in regions):
        raise bad_request(f"region must be one of {', '.join(sorted(regions))}")
    identity = request[IDENTITY]
    found = services(request)
    per_study = request.app[SETTINGS].ai.read_per == "study"

    def write(session):
        exam = repo.get_exam(session, uid)
        if per_study:  # an image's study (or a study's key) is read again, all of it
            key = repo.study_key(exam.exam.study_uid, uid) if exam is not None else uid
            study = repo.get_study(session, key)
            if study is None:
                return "converting" if exam is not None else "missing"
            if not study.readable and not region:
                return "unreadable"
            done = repo.requeue_study(session, key, region=region)
        elif exam is None:
            return "missing"
        else:
            done = queue.requeue(session, uid, region=region)
        if not done:
            return "busy"
        repo.audit(session, "requeue", username=identity.username, target=uid,
                   remote=request[CLIENT_IP], detail=f"region {region}" if region else "")
        if found.bus is not None:
            found.bus.publish_in(session, EXAM_REQUEUED, uid=uid)
        return "ok"

    assert found.db is not None
    outcome = await found.db.write(write)
    if outcome == "missing":
        raise web.HTTPNotFound(text=f"no exam {uid}")
    if outcome == "busy":
        raise web.HTTPConflict(text=f"exam {uid} is being processed now; try again later")
    if outcome == "converting":
        raise web.HTTPConflict(text=f"exam {uid} is still being converted; try again later")
    if outcome == "unreadable":
        raise web.HTTPConflict(text=f"no image of study {uid} matched a region rule: "
                                    "name the region to read it as")
    return web.json_response({"uid": uid, "status": "requeue", **({"region": region}
                                                                  if region else {})})


async def config(request: web.Request) -> web.Response:
    require(request, READ)
    settings = request.app[SETTINGS]
    identity = request[IDENTITY]
    fhir = None
    if settings.fhir.url:  # the HIS connection as the poller last found it
        fhir = FhirHealth.from_json(await database(request).read(repo.get_state,
                                                                 HEALTH_KEY)).as_dict()
    # (not audited: every page load reads it, and it holds no secret; sign-ins are)
    return web.json_response({
        "fhir": fhir,
        "version": __version__,
        "user": identity.username,
        "role": identity.role,
        "can": {"review": allowed(identity.role, REVIEW),
                "check": allowed(identity.role, CHECK),
                "requeue": allowed(identity.role, REQUEUE),
                "admin": allowed(identity.role, ADMIN)},
        "severity_threshold": settings.processing.severity_threshold,
        "page_size": settings.processing.page_size,
        "regions": sorted(settings.regions),
        "statuses": list(STATUSES),
        "read_per": settings.ai.read_per,
        # (the empty worklist says where to send images)
        "dicom": {"ae_title": settings.dicom.ae_title, "port": settings.dicom.port},
        "viewer_url": settings.web.viewer_url,
        # signed in by the cookie: what the page sends with every change (else "")
        "csrf": request.get(SESSION_CSRF, ""),
        "roles": list(settings.server.roles),
        "endpoints": _endpoints(settings, services(request).hub),
    })


AUDIT_PAGE = 100


async def users(request: web.Request) -> web.Response:
    """The users and their roles (from ``[users]``; never a hash): admins only."""
    require(request, ADMIN)
    return web.json_response({"users": [
        {"username": name, "role": user.role}
        for name, user in sorted(request.app[AUTH].users.items())]})


async def audit_log(request: web.Request) -> web.Response:
    """The audit log, newest first, 100 rows a page (``before`` = the last id seen):
    filtered by ``user``, ``action`` (a prefix) and ``since``/``until``. Admins only."""
    require(request, ADMIN)
    since, until = _window(request)
    q = request.query
    rows = await database(request).read(
        repo.audit_page, username=_text(q, "user", 128), action=_text(q, "action", 64),
        since=since, until=until, before_id=_int(q, "before", None, 1, 2**63 - 1),
        size=AUDIT_PAGE)
    return web.json_response({"entries": [
        {"id": r.id, "at": _iso(r.ts), "user": r.username, "action": r.action,
         "target": r.target, "remote": r.remote, "detail": r.detail} for r in rows],
        "more": len(rows) == AUDIT_PAGE})


async def unlinked_reports(request: web.Request) -> web.Response:
    """Radiologists' reports the FHIR poller found for our patients and could not link,
    with why (admins only: they name patients)."""
    require(request, ADMIN)
    rows = await database(request).read(repo.unlinked_reports)
    return web.json_response({"reports": [
        {"fhir_id": r.fhir_id, "patient": r.cnp,
         "accessions": [a for a in r.accessions.split(",") if a], "rule": r.rule,
         "reason": r.reason, "effective": _iso(r.effective), "first_seen": _iso(r.first_seen),
         "last_seen": _iso(r.last_seen)} for r in rows]})


RESULT_STATUSES = ("pending", "sent", "dead", "superseded")


def _result_json(r) -> dict:
    return {"id": r.id, "destination": r.destination, "uid": r.uid, "version": r.version,
            "review": r.review, "status": r.status, "attempts": r.attempts, "error": r.error,
            "created": _iso(r.created), "next_attempt": _iso(r.not_before) if
            r.status == "pending" else None, "sent": _iso(r.sent)}


async def results_outbox(request: web.Request) -> web.Response:
    """The results outbox: per destination set, how many wait and how many were given
    up; the newest results (``status``, ``destination`` filters), with their errors."""
    require(request, ADMIN)
    q = request.query
    status = _text(q, "status", 16)
    if status and status not in RESULT_STATUSES:
        raise bad_request(f"status must be one of {', '.join(RESULT_STATUSES)}")
    destination = _text(q, "destination", 16)
    if destination and destination not in ("dicom", "fhir"):
        raise bad_request("destination must be dicom or fhir")
    enabled = request.app[SETTINGS].results.enabled

    def read(session):
        return (repo.outbox_depths(session, enabled),
                repo.outbox_rows(session, status=status, destination=destination))

    depths, rows = await database(request).read(read)
    return web.json_response({
        "destinations": [{"destination": d.destination, "pending": d.pending, "dead": d.dead,
                          "oldest_pending": _iso(d.oldest_pending)} for d in depths],
        "results": [_result_json(r) for r in rows]})


async def resend_result(request: web.Request) -> web.Response:
    """A dead-lettered result sent again (its tries start over); 409 unless dead."""
    require(request, ADMIN)
    try:
        row_id = int(request.match_info["id"])
    except ValueError:
        raise bad_request("the result id is a number") from None
    identity = request[IDENTITY]

    def write(session):
        if not repo.resend_result(session, row_id):
            return False
        repo.audit(session, "result.resend", username=identity.username,
                   target=str(row_id), remote=request[CLIENT_IP])
        return True

    if not await database(request).write(write):
        raise web.HTTPConflict(text=f"result {row_id} is not dead-lettered (or unknown)")
    return web.json_response({"id": row_id, "status": "pending"})


def _endpoints(settings: Settings, hub: Hub | None) -> list[dict]:
    """The model endpoints (base URL without credentials, model) with the relays' last
    view of them: up or down and the last error."""
    ai = settings.ai
    configured = {"primary": (ai.primary_url, ai.model),
                  "secondary": (ai.secondary_url, ai.secondary_model or ai.model)}
    seen = {e["name"]: e for e in hub.endpoints()} if hub is not None else {}
    found = [{"name": name, "url": mask_url(url), "model": model,
              "healthy": seen.get(name, {}).get("healthy"),
              **{key: seen.get(name, {}).get(key, "")
                 for key in ("error", "error_at", "probe", "probe_reason", "probe_at")}}
             for name, (url, model) in configured.items() if url]
    if ai.shadow_url:  # reads a copy, never in the failover order
        found.append({"name": "shadow", "url": mask_url(ai.shadow_url),
                      "model": ai.shadow_model or ai.model, "healthy": None, "error": "",
                      "error_at": "", "probe": "", "probe_reason": "", "probe_at": ""})
    return found


def load_spec(regions: Iterable[str] | None = None) -> dict:
    """The OpenAPI document; with ``regions`` (the configured ones), the region a requeue
    may name is listed, as this server will accept it."""
    spec = json.loads(resources.files("xrayvision.web").joinpath("openapi.json").read_text())
    if regions is not None:
        body = spec["paths"]["/api/requeue"]["post"]["requestBody"]
        body["content"]["application/json"]["schema"]["properties"]["region"]["enum"] = \
            ["", *sorted(regions)]
    return spec


async def spec(request: web.Request) -> web.Response:
    require(request, READ)
    return web.json_response(request.app[SPEC])


SPEC = web.AppKey("spec", dict)
TOTALS = web.AppKey("totals", AggregateCache)
STATS = web.AppKey("stats", AggregateCache)


def setup_api_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[SPEC] = load_spec(settings.regions)
    app[TOTALS] = AggregateCache(settings.web.count_cache, size=512)
    app[STATS] = AggregateCache(settings.web.stats_cache, size=256, stale_while_revalidate=True)
    r = app.router
    r.add_get("/api/exams", list_exams)
    r.add_get("/api/exams/{uid}", get_exam)
    r.add_get("/api/studies", list_studies)
    r.add_get("/api/images/{uid}", get_image)
    r.add_get("/api/stats/global", stats_global)
    r.add_get("/api/stats/regional", stats_regional)
    r.add_get("/api/stats/radiologists", stats_radiologists)
    r.add_get("/api/stats/insights", stats_insights)
    r.add_get("/api/stats/timeline", stats_timeline)
    r.add_get("/api/stats/summary", stats_summary)
    r.add_get("/api/admin/fhir/unlinked", unlinked_reports)
    r.add_get("/api/admin/results", results_outbox)
    r.add_post("/api/admin/results/{id}/resend", resend_result)
    r.add_get("/api/stats/models", stats_models)
    r.add_get("/api/stats/turnaround", stats_turnaround)
    r.add_post("/api/check", check)
    r.add_post("/api/analyse", analyse)
    r.add_post("/api/rad_review", rad_review)
    r.add_post("/api/requeue", requeue)
    r.add_get("/api/admin/users", users)
    r.add_get("/api/admin/audit", audit_log)
    r.add_get("/api/config", config)
    r.add_get("/api/spec", spec)
