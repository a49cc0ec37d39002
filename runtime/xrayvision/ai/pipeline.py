"""The report pipeline: the model's report of an exam (REP, then CHK with the text
services of :mod:`xrayvision.ai.text`), stored with the exam's completion.

:meth:`Pipeline.process_exam` runs both model calls (report, then CHK) before writing, and
stores the report and completes the exam in one transaction: a crash or a lost lease
leaves the exam to be processed again, never half-done. A requeued exam (one that already
has a report) goes through the REV prompt with its previous report, and its new report is
the next version (the previous one is kept, with its review: ``repo.save_ai_read``); a
severe finding is notified once per version.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from xrayvision import metrics
from xrayvision.ai.client import ChatResult
from xrayvision.ai.parse import Check, Report, parse_report
from xrayvision.ai.prompts import Prompts
from xrayvision.ai.text import TextServices
from xrayvision.db import queue, repo
from xrayvision.db.engine import Database
from xrayvision.db.models import utcnow
from xrayvision.db.repo import ReportContext, StudyContext
from xrayvision.events import REPORT_READY, Bus
from xrayvision.images import ImageStore, fit_png

log = logging.getLogger(__name__)

SEX = {"M": "male", "F": "female", "O": "other"}


class MissingImage(Exception):
    """The exam's PNG is not in the image store."""


@dataclass(frozen=True)
class ExamContext:
    region: str
    projection: str
    sex: str
    age: int | None

    def describe(self) -> str:
        parts = [f"Region: {self.region or 'unknown'}",
                 f"Projection: {self.projection or 'unknown'}",
                 f"Patient sex: {SEX.get(self.sex, 'unknown')}"]
        if self.age is not None:
            parts.append(f"Patient age: {self.age} years")
        return "\n".join(parts)


def age_at(birth: dt.date | None, when: dt.datetime | None) -> int | None:
    if birth is None:
        return None
    day = (when or utcnow()).date()
    years = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    return years if 0 <= years < 130 else None


def exam_context(exam: ReportContext) -> ExamContext:
    return ExamContext(region=exam.region, projection=exam.projection, sex=exam.sex,
                       age=age_at(exam.birth_date, exam.series_datetime or exam.created))


def _image_part(png: bytes) -> dict:
    image = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return {"type": "image_url", "image_url": {"url": image}}


def report_messages(prompts: Prompts, ctx: ExamContext, png: bytes,
                    previous: str | None = None) -> list[dict]:
    """The chat-completions messages for a report (pure): system REP; user USR with the
    context, REV with the previous report on a second reading, and the PNG as a data URI."""
    return study_messages(prompts, ctx, [png], previous=previous)


def describe_views(views: list[str], total: int) -> str:
    """How many images a study request carries and their views, in order (pure)."""
    head = f"Images: {len(views)} of the study's {max(total, len(views))}, in order"
    return head + ": " + "; ".join(f"{i}. {v or 'view unknown'}"
                                   for i, v in enumerate(views, 1))


def study_messages(prompts: Prompts, ctx: ExamContext, pngs: list[bytes], *,
                   views: list[str] | None = None, total: int = 0,
                   previous: str | None = None) -> list[dict]:
    """The messages of one read of several images (pure): as :func:`report_messages`,
    with one ``image_url`` part per PNG and, given ``views``, a line saying how many
    images of the study's ``total`` there are and which views, in the parts' order."""
    text = f"{prompts.usr}\n\n{ctx.describe()}"
    if views is not None:
        text += "\n" + describe_views(views, max(total, len(views)))
    if previous:
        text += f"\n\n{prompts.rev}\n{previous}"
    return [
        {"role": "system", "content": prompts.rep},
        {"role": "user", "content": [{"type": "text", "text": text},
                                     *(_image_part(png) for png in pngs)]},
    ]


Enrich = Callable[[ReportContext], Awaitable[None]]
# Offered each stored read's key and request: takes a copy or not, never waits.
Shadow = Callable[[str, list[dict]], object]
Notify = Callable[[ReportContext, Check], Awaitable[None]]


async def no_enrichment(exam: ReportContext) -> None:
    """No enrichment (FHIR off): the exam is read with what its DICOM header says."""


@dataclass(frozen=True)
class Outcome:
    uid: str
    report: Report
    check: Check
    endpoint: str
    following: Any = None  # what ``then`` returned (the relay's next claimed exam)


class Pipeline:
    """Reads exams with the text services' model client; CHK through the text services."""

    def __init__(self, text: TextServices, db: Database, store: ImageStore, bus: Bus, *,
                 severity_threshold: int = 5, enrich: Enrich = no_enrichment,
                 notify: Notify | None = None, max_tokens: int = 1024,
                 max_images: int = 4, results: tuple[str, ...] = (), max_side: int = 0,
                 shadow: Shadow | None = None) -> None:
        self.text = text
        self.client = text.client
        self.prompts = text.prompts
        self.db = db
        self.store = store
        self.bus = bus
        self.threshold = severity_threshold
        self.enrich = enrich
        self.notify = notify
        self.max_tokens = max_tokens
        self.max_images = max_images
        self.results = results  # destinations each read is sent to (the outbox)
        self.max_side = max_side  # the model's input size; larger PNGs are scaled down
        self.shadow = shadow  # takes a copy of each read's request (never waits)

    def _png(self, uid: str) -> bytes | None:
        """An image as the model gets it (blocking: run in a thread)."""
        png = self.store.get(uid, "png")
        return None if png is None else fit_png(png, self.max_side)

    async def process_exam(self, uid: str, worker: str,
                           then: Callable[[Session], Any] | None = None,
                           exam: ReportContext | None = None) -> Outcome:
        """Reports on a claimed exam and completes it; ``then(session)`` runs in the same
        transaction (the relay claims its next exam there), and ``exam`` may carry the
        context already read. Raises ModelUnavailable (the caller releases the exam),
        ModelBadOutput, LeaseLost, MissingImage, ModelRejected."""
        if exam is None:
            exam = await self.db.read(repo.report_context, uid)
        if exam is None:
            raise queue.LeaseLost(f"exam {uid} vanished")
        if self.enrich is not no_enrichment:
            await self.enrich(exam)
            exam = await self.db.read(repo.report_context, uid) or exam
        png = await asyncio.to_thread(self._png, uid)
        if png is None:
            raise MissingImage(f"no PNG stored for exam {uid}")
        messages = report_messages(self.prompts, exam_context(exam), png,
                                   exam.previous_report or None)
        result: ChatResult = await self.client.chat(messages, call="report",
                                                    max_tokens=self.max_tokens)
        report = parse_report(result.text)
        check = await self.text.check_report(report.text)

        def store_and_complete(session: Session) -> Any:
            repo.save_ai_read(
                session, uid, text=report.text, positive=check.positive,
                severity=check.severity, confidence=check.confidence, summary=check.summary,
                model=result.model, endpoint=result.endpoint, latency=round(result.seconds, 3),
                prompt_version=self.prompts.version, threshold=self.threshold,
                results=self.results)
            queue.complete(session, uid, worker)
            self.bus.publish_in(session, REPORT_READY, uid=uid, severity=check.severity,
                                positive=check.positive, region=exam.region)
            return then(session) if then is not None else None

        following = await self.db.write(store_and_complete)
        metrics.SEVERITY.labels("ai", exam.region or "none", str(check.severity)).inc()
        metrics.RECEIPT_TO_REPORT_SECONDS.observe(
            max(0.0, (utcnow() - exam.created).total_seconds()))
        log.info("exam reported", extra={"uid": uid, "severity": check.severity,
                                         "endpoint": result.endpoint,
                                         "seconds": round(result.seconds, 2)})
        if self.shadow is not None:
            self.shadow(uid, messages)
        if self.notify is not None and check.severity >= self.threshold:
            await self.notify(exam, check)
        return Outcome(uid, report, check, result.endpoint, following)

    async def process_study(self, key: str, worker: str,
                            then: Callable[[Session], Any] | None = None,
                            study: StudyContext | None = None) -> Outcome:
        """Reports on a claimed study (``queue.STUDIES``): its first ``max_images``
        readable images in one request, the read stored for the study and covering all
        its readable images, completed in one transaction with ``then`` as
        :meth:`process_exam`. Raises as :meth:`process_exam` (MissingImage when none of
        the images' PNGs is stored)."""
        if study is None:
            study = await self.db.read(repo.study_context, key)
        if study is None:
            raise MissingImage(f"study {key} has no readable image")
        if self.enrich is not no_enrichment:
            await self.enrich(study.lead)
            study = await self.db.read(repo.study_context, key) or study
        sent: list[repo.StudyImageRef] = []
        pngs: list[bytes] = []
        for image in study.images:
            if len(pngs) == self.max_images:
                break
            png = await asyncio.to_thread(self._png, image.uid)
            if png is not None:  # a lost PNG: the others are still read
                sent.append(image)
                pngs.append(png)
        if not pngs:
            raise MissingImage(f"no PNG stored for any image of study {key}")
        ctx = replace(exam_context(study.lead), region=study.regions,
                      projection=",".join(dict.fromkeys(i.projection for i in sent
                                                        if i.projection)))
        messages = study_messages(self.prompts, ctx, pngs, views=[i.projection for i in sent],
                                  total=len(study.images),
                                  previous=study.previous_report or None)
        result: ChatResult = await self.client.chat(messages, call="report",
                                                    max_tokens=self.max_tokens)
        report = parse_report(result.text)
        check = await self.text.check_report(report.text)

        def store_and_complete(session: Session) -> Any:
            repo.save_study_read(
                session, key, [i.uid for i in study.images], text=report.text,
                positive=check.positive, severity=check.severity,
                confidence=check.confidence, summary=check.summary, model=result.model,
                endpoint=result.endpoint, latency=round(result.seconds, 3),
                prompt_version=self.prompts.version, threshold=self.threshold,
                results=self.results)
            queue.complete(session, key, worker, table=queue.STUDIES)
            self.bus.publish_in(session, REPORT_READY, uid=key, severity=check.severity,
                                positive=check.positive, region=study.regions,
                                images=[i.uid for i in study.images][:40])  # NOTIFY size
            return then(session) if then is not None else None

        following = await self.db.write(store_and_complete)
        for region in study.regions.split(",") if study.regions else ["none"]:
            metrics.SEVERITY.labels("ai", region, str(check.severity)).inc()
        metrics.RECEIPT_TO_REPORT_SECONDS.observe(
            max(0.0, (utcnow() - study.lead.created).total_seconds()))
        log.info("study reported", extra={"uid": key, "severity": check.severity,
                                          "images": len(pngs), "endpoint": result.endpoint,
                                          "seconds": round(result.seconds, 2)})
        if self.shadow is not None:
            self.shadow(key, messages)
        if self.notify is not None and check.severity >= self.threshold:
            await self.notify(study.lead, check)
        return Outcome(key, report, check, result.endpoint, following)
