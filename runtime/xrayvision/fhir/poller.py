"""The FHIR poller: radiologists' reports for finished exams.

One cycle:

1. Reads the ``done`` exams received in the last ``lookback_days`` that have a patient id.
2. For every patient with at least one such exam still without a radiologist report:
   **one** search, ``DiagnosticReport?patient.identifier=<cnp>`` with the ServiceRequests
   the reports are based on included (at most ``concurrency`` patients at once).
3. Once per cycle, the reports updated since the last good cycle (amendments to reports
   already stored, for patients step 2 did not ask about).
4. Each report is matched to exams (:mod:`xrayvision.fhir.match`); when several reports
   match one exam the latest wins. A report new to an exam, or a new version of it
   (amended, corrected), is checked by the model (CHK: severity, positive, summary) and
   translated (TRN, Romanian to English), then stored for each exam of the study and
   for the study itself (``repo.link_rad_report``) in one transaction that also
   publishes ``rad_report.ready``. A model that is down leaves the
   report stored with ``checked = false``; later cycles check it then. A report the HIS
   withdrew (``entered-in-error``, ``cancelled``) leaves every exam and study it was
   stored for, for the history (audited); the report it replaces, too.
5. Agreement counts by region go to the metrics.

A cycle whose FHIR requests fail stops asking (the rest waits for the next cycle) and the
next cycle comes later and later (back-off) until one succeeds. Re-running a cycle
changes nothing: reports are keyed by exam and FHIR version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache
from sqlalchemy.orm import Session

from xrayvision import metrics
from xrayvision.agreement import CLASSES, Confusion
from xrayvision.ai.client import ModelError
from xrayvision.ai.parse import Check
from xrayvision.config import Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.models import utcnow
from xrayvision.db.repo import PollExam, ReportContext
from xrayvision.dicom.regions import identify_region
from xrayvision.events import RAD_REPORT_READY, Bus
from xrayvision.fhir.client import (
    WITHDRAWN_STATUSES,
    FhirClient,
    FhirError,
    FhirHTTPError,
    SearchResult,
    redact,
)
from xrayvision.fhir.health import HEALTH_KEY, FhirHealth
from xrayvision.fhir.match import match_report
from xrayvision.fhir.resources import (
    FhirReport,
    Identifiers,
    identifiers_of,
    is_imaging,
    is_ours,
    names_imaging,
    patient_ids,
    practitioner_name,
    report_of,
)

log = logging.getLogger(__name__)

LAST_POLL_KEY = "fhir.last_poll"
# Reports updated this long before the last cycle's start are asked for again, for
# clock differences between us and the FHIR server.
OVERLAP = dt.timedelta(minutes=5)
EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


class ReportChecker(Protocol):
    """What the poller needs of the model's text services (``ai.text.TextServices``)."""

    async def check_report(self, text: str) -> Check: ...

    async def translate_report(self, text: str) -> str: ...


@dataclass
class PollStats:
    patients: int = 0
    requests: int = 0
    new: int = 0
    amended: int = 0
    unchanged: int = 0
    unmatched: int = 0
    ambiguous: int = 0
    withdrawn: int = 0  # stored reports the HIS withdrew (entered-in-error, cancelled)
    enrichment_retried: int = 0  # patient lookups made again (skipped before a read)
    not_imaging: int = 0  # returned by a server that ignored the category/code filter
    rechecked: int = 0
    unchecked: int = 0  # stored without a model check (model down)
    failed_patients: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class _Result:
    severity: int = -1
    positive: int = -1
    summary: str = ""
    text_en: str = ""
    checked: bool = False


class Poller:
    def __init__(self, client: FhirClient, db: Database, checker: ReportChecker,
                 bus: Bus, settings: Settings, *,
                 enrich: Callable[[ReportContext], Awaitable[None]] | None = None,
                 clock: Callable[[], dt.datetime] = utcnow,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.client = client
        self.db = db
        self.checker = checker
        self.bus = bus
        self.fhir = settings.fhir
        self.regions = settings.regions
        self.threshold = settings.processing.severity_threshold
        self.per_study = settings.ai.read_per == "study"
        ai = settings.ai
        # the model label's values: the models configured here (others count as "other")
        self.models = frozenset(m for m in (ai.model, ai.secondary_model, ai.shadow_model) if m)
        self.clock = clock
        self._sleep = sleep
        self.window = dt.timedelta(days=self.fhir.match_window_days)
        self.health = FhirHealth()
        self.unlinked: set[str] = set()  # FHIR ids listed as not linked (read each cycle)
        # Patient lookups the relay could not make (HIS down) are made again here.
        self.enrich = enrich
        # Practitioner/<id> -> name: radiologists change names rarely, reports often
        self.practitioners: TTLCache[str, str] = TTLCache(maxsize=4096, ttl=86400)
        # ImagingStudy/<id> -> its identifiers (a study's UID does not change)
        self.imaging_studies: TTLCache[str, Identifiers] = TTLCache(maxsize=16384, ttl=86400)

    # --- the loop --------------------------------------------------------------------

    async def self_check(self) -> str:
        """One request at start: are our credentials accepted, and does any Patient have
        an identifier in ``identifier_system``? Returns what looks wrong ("" when
        nothing), logged and kept for the dashboard until the process restarts."""
        system = self.fhir.identifier_system
        params = {"_count": "1", **({"identifier": f"{system}|"} if system else {})}
        warning = ""
        try:
            bundle = await self.client.get("Patient", params)
        except FhirHTTPError as exc:
            warning = (f"the FHIR server refused our credentials ({redact(str(exc))}): "
                       "check [fhir] username and password" if exc.status in (401, 403)
                       else f"the FHIR server refused a Patient search ({redact(str(exc))})")
        except FhirError as exc:  # unreachable now: an outage, said by the cycles
            await self._record(error=redact(str(exc)))
            return ""
        else:
            if system and not bundle.get("entry") and not bundle.get("total"):
                warning = (f"no Patient on the FHIR server has an identifier in system "
                           f"{system}: [fhir] identifier_system is probably not your HIS's "
                           "(empty: try every identifier)")
        if warning:
            log.warning("FHIR self-check: " + warning)
        else:
            log.info("FHIR self-check passed", extra={"identifier_system": system})
        # (a refusal is an answer too: the server is up, what we send is wrong)
        await self._record(ok=True, warning=warning)
        return warning

    async def _record(self, *, ok: bool = False, error: str = "",
                      warning: str | None = None) -> None:
        """Keeps what the dashboard says about the HIS (state row, gauge)."""
        now = self.clock().isoformat()
        if warning is not None:
            self.health = dataclasses.replace(self.health, warning=warning)
        if ok:
            self.health = self.health.succeeded(now)
        elif error:
            self.health = self.health.failed(now, error)
        metrics.FHIR_HEALTHY.set(1 if self.health.ok else 0)
        try:
            await self.db.write(repo.set_state, HEALTH_KEY, self.health.to_json())
        except Exception:  # noqa: BLE001 - the database away: the next cycle writes it
            log.debug("could not store the FHIR health", exc_info=True)

    async def run(self) -> None:
        """Checks the connection once, then polls every ``poll_interval`` seconds; after
        failed cycles waits longer, doubling up to an hour (or the interval, when that is
        longer)."""
        await self.self_check()
        failures = 0
        while True:
            started = time.monotonic()
            error = ""
            try:
                stats = await self.poll_once()
                failed = not stats.ok
                error = "; ".join(stats.errors)
            except FhirError as exc:  # failed before any patient was asked
                log.warning("FHIR poll failed", extra={"error": redact(str(exc))})
                failed, error = True, str(exc)
            except Exception as exc:
                log.exception("FHIR poll failed unexpectedly")
                failed, error = True, f"{type(exc).__name__}: {exc}"
            if failed:
                await self._record(error=redact(error))
            elif stats.requests:
                await self._record(ok=True)
            elif not self.health.ok:  # a cycle that asked nothing proves nothing: ask
                await self.self_check()
            metrics.FHIR_POLL_SECONDS.observe(time.monotonic() - started)
            interval = self.fhir.poll_interval
            if failed:
                failures += 1
                metrics.FHIR_POLL_FAILURES.inc()
                delay = min(interval * 2 ** failures, max(interval, 3600.0))
                log.warning("FHIR poller backing off",
                            extra={"failures": failures, "retry_in": round(delay)})
            else:
                failures = 0
                delay = interval
            await self._sleep(delay)

    async def poll_once(self) -> PollStats:
        """One cycle (see the module docstring); returns what it did."""
        started = self.clock()
        requests_before = self.client.requests
        stats = PollStats()
        oldest = started - dt.timedelta(days=self.fhir.lookback_days)
        exams = await self.db.read(repo.poll_exams, oldest)
        self.unlinked = await self.db.read(repo.unlinked_ids)
        by_patient: dict[str, list[PollExam]] = defaultdict(list)
        for exam in exams:
            by_patient[exam.cnp].append(exam)
        pending = sorted(cnp for cnp, items in by_patient.items()
                         if any(not e.has_report for e in items))
        handled: set[str] = set()

        last = await self.db.read(repo.get_state, LAST_POLL_KEY)
        if last:
            # After a long outage, updates older than the lookback cannot concern our exams.
            since = max(dt.datetime.fromisoformat(last) - OVERLAP, oldest)
            try:
                await self._amendments(since, by_patient, set(pending), handled, stats)
            except FhirError as exc:
                stats.errors.append(f"amended reports: {exc}")

        down = asyncio.Event()
        limit = asyncio.Semaphore(self.fhir.concurrency)

        async def one(cnp: str) -> None:
            async with limit:
                if down.is_set():
                    return
                try:
                    result = await self.client.diagnostic_reports(
                        identifier=cnp, system=self.fhir.identifier_system,
                        categories=self.fhir.report_categories, codes=self.fhir.report_codes)
                except FhirHTTPError as exc:
                    stats.failed_patients += 1
                    if exc.status in (401, 403):  # refused to us, not about this patient
                        stats.errors.append(f"credentials refused: {exc}")
                        down.set()
                    return
                except FhirError as exc:
                    stats.failed_patients += 1
                    stats.errors.append(str(exc))
                    down.set()
                    return
                stats.patients += 1
                handled.update(await self._apply(by_patient[cnp], result, stats))

        await asyncio.gather(*(one(cnp) for cnp in pending))
        await self._recheck([e for e in exams if e.has_report and not e.rad_checked
                             and e.uid not in handled], stats)
        if self.enrich is not None and not stats.errors:
            await self._enrich_missing(oldest, stats)
        await self._export_agreement(started)
        stats.requests = self.client.requests - requests_before
        if stats.ok:
            await self.db.write(repo.set_state, LAST_POLL_KEY, started.isoformat())
            metrics.FHIR_POLL_LAST_SUCCESS.set(time.time())
        log.info("FHIR poll finished",
                 extra={"patients": stats.patients, "requests": stats.requests,
                        "new": stats.new, "amended": stats.amended,
                        "unmatched": stats.unmatched, "ambiguous": stats.ambiguous,
                        "withdrawn": stats.withdrawn, "not_imaging": stats.not_imaging,
                        "failed_patients": stats.failed_patients,
                        "errors": len(stats.errors),
                        "error": redact("; ".join(stats.errors))[:500]})
        return stats

    async def _enrich_missing(self, oldest: dt.datetime, stats: PollStats) -> None:
        """Patients of recent exams the hospital system never filled in (the lookup
        before their read was skipped or failed): looked up again, their order's
        priority too (the enricher caches answers and pauses after a failure)."""
        assert self.enrich is not None
        for uid in await self.db.read(repo.unenriched_exams, oldest):
            context = await self.db.read(repo.report_context, uid)
            if context is not None:
                await self.enrich(context)
                stats.enrichment_retried += 1

    async def _amendments(self, since: dt.datetime, by_patient: Mapping[str, list[PollExam]],
                          pending: set[str], handled: set[str], stats: PollStats) -> None:
        """Reports updated since the last cycle, for patients not searched this cycle."""
        result = await self.client.diagnostic_reports(
            since=since.isoformat().replace("+00:00", "Z"),
            categories=self.fhir.report_categories, codes=self.fhir.report_codes)
        # A patient's identifiers in the configured system; with none configured, every
        # identifier (the CNP need not be the first: a record number often is).
        ids_of = {f"Patient/{resource.get('id')}": patient_ids(resource,
                                                               self.fhir.identifier_system)
                  for resource in result.included if resource.get("resourceType") == "Patient"}
        grouped: dict[str, list[dict]] = defaultdict(list)
        for resource in result.matches:
            ids = ids_of.get(str((resource.get("subject") or {}).get("reference") or ""), ())
            for cnp in sorted(ids):
                if cnp in by_patient and cnp not in pending:
                    grouped[cnp].append(resource)
                    break
        for cnp, resources in grouped.items():
            handled.update(await self._apply(
                by_patient[cnp], SearchResult(resources, result.included, result.pages), stats))

    # --- one patient's reports -------------------------------------------------------

    def _choose(self, exams: list[PollExam], result: SearchResult, stats: PollStats,
                unlinked: list[repo.Unlinked]) -> dict[str, FhirReport]:
        """exam uid -> the report it gets: of the reports matching it, an identifier
        match before a date match, then the latest (:mod:`xrayvision.fhir.match`)."""
        requests = {f"{r.get('resourceType')}/{r.get('id')}": identifiers_of(r)
                    for r in result.included
                    if r.get("resourceType") in ("ServiceRequest", "ImagingStudy")}
        requests.update(self.imaging_studies)
        chosen: dict[str, tuple[int, FhirReport]] = {}
        for resource in result.matches:
            if is_ours(resource):
                continue  # our own AI read, sent back to the HIS ([results] fhir_url)
            report = report_of(resource)
            if report.status in WITHDRAWN_STATUSES:
                continue  # (withdraws what was stored: _apply)
            if not is_imaging(resource, self.fhir.report_categories, self.fhir.report_codes):
                # (a server that ignored the category or code filter)
                stats.not_imaging += 1
                metrics.FHIR_REPORTS.labels("not_imaging").inc()
                continue
            if report.notes:
                log.info("report attachments skipped or re-decoded",
                         extra={"fhir_id": report.fhir_id, "notes": "; ".join(report.notes)})
            region = (identify_region(self.regions, [report.description])
                      or identify_region(self.regions, [report.text]))
            match = match_report(report, exams, requests, window=self.window, region=region,
                                 imaging=names_imaging(report.description, report.text))
            if not match.linked:  # listed for the admins, with why
                accessions = set(report.identifiers.accessions)
                for ref in report.based_on:
                    accessions |= requests.get(ref, Identifiers()).accessions
                unlinked.append(repo.Unlinked(report.fhir_id, exams[0].cnp if exams else "",
                                              tuple(accessions), match.rule, match.reason,
                                              report.when))
            if match.rule == "ambiguous":
                stats.ambiguous += 1
                metrics.FHIR_AMBIGUOUS.inc()
                log.warning("report not linked: ambiguous",
                            extra={"fhir_id": report.fhir_id, "reason": match.reason})
                continue
            if not match.linked:
                stats.unmatched += 1
                metrics.FHIR_REPORTS.labels("unmatched").inc()
                log.info("report not linked: no match",
                         extra={"fhir_id": report.fhir_id, "reason": match.reason})
                continue
            for uid in match.uids:
                held = chosen.get(uid)
                if held is None or (match.rank, *_order(report)) > (held[0], *_order(held[1])):
                    chosen[uid] = (match.rank, report)
        return {uid: report for uid, (_, report) in chosen.items()}

    async def _apply(self, exams: list[PollExam], result: SearchResult,
                     stats: PollStats) -> set[str]:
        """Stores what is new in one patient's reports and withdraws what the HIS
        withdrew; returns the uids it stored or withdrew from."""
        withdrawn = {str(r.get("id") or ""): str(r.get("status"))
                     for r in result.matches if r.get("status") in WITHDRAWN_STATUSES}
        retract = {e.rad_fhir_id: withdrawn[e.rad_fhir_id] for e in exams
                   if e.rad_fhir_id in withdrawn}
        # Exams whose report is withdrawn are without one again: another report may match.
        exams = [dataclasses.replace(e, rad_fhir_id="", rad_version="", rad_checked=False,
                                     has_report=False) if e.rad_fhir_id in retract else e
                 for e in exams]
        await self._read_imaging_studies(result)
        unlinked: list[repo.Unlinked] = []
        chosen = self._choose(exams, result, stats, unlinked)
        if unlinked:
            await self.db.write(repo.note_unlinked, unlinked)
            self.unlinked.update(u.fhir_id for u in unlinked)
        by_uid = {e.uid: e for e in exams}
        changes: list[tuple[PollExam, FhirReport]] = []
        for uid, report in chosen.items():
            exam = by_uid[uid]
            if exam.rad_fhir_id == report.fhir_id and exam.rad_version == report.version:
                stats.unchanged += 1
                metrics.FHIR_REPORTS.labels("unchanged").inc()
            else:
                changes.append((exam, report))
        if not changes and not retract:
            return set()
        changes = [(exam, await self._named(report, result)) for exam, report in changes]
        texts = {report.text for _, report in changes}
        results = dict(zip(texts, await asyncio.gather(*(self._check(t) for t in texts)),
                           strict=True))
        withdrawn_from: set[str] = set()

        def store(session: Session) -> None:
            repo.clear_unlinked(session, sorted({r.fhir_id for _, r in changes}
                                                & self.unlinked))
            for fhir_id, status in sorted(retract.items()):
                for uid in repo.withdraw_rad_reports(session, fhir_id, status):
                    if uid in by_uid:
                        withdrawn_from.add(uid)
                        self.bus.publish_in(session, RAD_REPORT_READY, uid=uid, severity=-1,
                                            positive=-1, region=by_uid[uid].region,
                                            amended=True, withdrawn=True)
            # the latest report last: it is the one its study keeps
            for exam, report in sorted(changes, key=lambda c: (c[1].when or EARLIEST,
                                                                c[1].fhir_id)):
                res = results[report.text]
                repo.save_rad_report(
                    session, exam.uid, stored=exam.has_report, fhir_id=report.fhir_id,
                    fhir_version=report.version, fhir_status=report.status, text=report.text,
                    radiologist=report.radiologist, severity=res.severity,
                    positive=res.positive, summary=res.summary, text_en=res.text_en,
                    checked=res.checked)
                repo.link_rad_report(session, exam.uid, repo.study_key(exam.study_uid,
                                                                       exam.uid))
                self.bus.publish_in(session, RAD_REPORT_READY, **_event(exam, res))

        await self.db.write(store)
        for fhir_id, status in sorted(retract.items()):
            stats.withdrawn += 1
            metrics.FHIR_REPORTS.labels("withdrawn").inc()
            log.info("radiologist report withdrawn by the HIS",
                     extra={"fhir_id": fhir_id, "status": status})
        counted: set[str] = set()
        for exam, report in changes:
            res = results[report.text]
            amended = exam.has_report
            stats.amended += amended
            stats.new += not amended
            stats.unchecked += not res.checked
            metrics.FHIR_REPORTS.labels("amended" if amended else "new").inc()
            if res.checked:
                self._count_severity(exam, res, counted)
        return {exam.uid for exam, _ in changes} | withdrawn_from

    async def _read_imaging_studies(self, result: SearchResult) -> None:
        """The ImagingStudies that reports without identifiers of their own refer to
        (R4 has no search parameter to include them): read once each, cached a day; one
        that cannot be read leaves its report to the later rules this cycle."""
        included = {f"ImagingStudy/{r.get('id')}" for r in result.included
                    if r.get("resourceType") == "ImagingStudy"}
        for resource in result.matches:
            if resource.get("identifier"):
                continue  # matched by its own identifiers first
            for ref in report_of(resource).imaging_studies:
                if ref in included or ref in self.imaging_studies:
                    continue
                try:
                    self.imaging_studies[ref] = identifiers_of(await self.client.get(ref))
                except FhirError:
                    continue  # (logged by the client)

    async def _named(self, report: FhirReport, result: SearchResult) -> FhirReport:
        """``report`` with its radiologist named from the Practitioner it references
        when it carries no display (included in the search, else read once and cached
        for a day; unnamed when that fails)."""
        ref = report.radiologist_ref
        if report.radiologist or not ref:
            return report
        for resource in result.included:
            if (resource.get("resourceType") == "Practitioner"
                    and f"Practitioner/{resource.get('id')}" == ref):
                self.practitioners[ref] = practitioner_name(resource)
        if ref not in self.practitioners:
            try:
                self.practitioners[ref] = practitioner_name(await self.client.get(ref))
            except FhirError:
                return report  # (logged by the client) named on a later version
        return dataclasses.replace(report, radiologist=self.practitioners[ref])

    def _count_severity(self, exam: PollExam, res: _Result, counted: set[str]) -> None:
        """``xrayvision_severity_total{source="rad"}`` counts what the AI reads are
        compared with: each image, or read per study each study once."""
        key = repo.study_key(exam.study_uid, exam.uid) if self.per_study else exam.uid
        if key not in counted:
            counted.add(key)
            metrics.SEVERITY.labels("rad", exam.region or "none", str(res.severity)).inc()

    async def _check(self, text: str) -> _Result:
        """CHK and TRN of a report text; an unchecked result when the model fails."""
        if not text.strip():
            return _Result(checked=True)
        try:
            check, text_en = await asyncio.gather(self.checker.check_report(text),
                                                  self.checker.translate_report(text))
        except ModelError as exc:
            log.warning("radiologist report stored unchecked; the model failed",
                        extra={"error": str(exc)})
            return _Result()
        return _Result(check.severity, check.positive, check.summary, text_en, True)

    async def _recheck(self, exams: list[PollExam], stats: PollStats) -> None:
        """CHK/TRN for stored reports that the model could not check before."""
        if not exams:
            return
        texts = await self.db.read(repo.unchecked_rad_reports, [e.uid for e in exams])
        by_uid = {e.uid: e for e in exams}
        counted: set[str] = set()
        for uid, text in texts.items():
            res = await self._check(text)
            if not res.checked:
                stats.unchecked += 1
                return  # the model is down: the rest waits for the next cycle
            exam = by_uid[uid]

            def store(session: Session, uid: str = uid, res: _Result = res,
                      exam: PollExam = exam) -> None:
                repo.save_rad_report(session, uid, severity=res.severity,
                                     positive=res.positive, summary=res.summary,
                                     text_en=res.text_en, checked=True)
                repo.link_rad_report(session, uid, repo.study_key(exam.study_uid, uid))
                self.bus.publish_in(session, RAD_REPORT_READY, **_event(exam, res))

            await self.db.write(store)
            stats.rechecked += 1
            self._count_severity(exam, res, counted)

    async def _export_agreement(self, now: dt.datetime) -> None:
        counts = await self.db.read(repo.agreement_counts, self.threshold, "region",
                                    now - dt.timedelta(days=self.fhir.lookback_days),
                                    per_study=self.per_study)
        metrics.AGREEMENT.clear()
        for region, confusion in counts.items():
            label = region or "none"
            for name, value in zip(CLASSES, (confusion.tp, confusion.tn, confusion.fp,
                                             confusion.fn), strict=True):
                metrics.AGREEMENT.labels(label, name).set(value)
            metrics.AGREEMENT.labels(label, "not_assessed").set(confusion.not_assessed)
        since = now - dt.timedelta(days=self.fhir.lookback_days)
        live = await self.db.read(repo.agreement_counts, self.threshold, "model", since,
                                  per_study=self.per_study)
        shadow = await self.db.read(repo.shadow_agreement, self.threshold, since)
        metrics.MODEL_AGREEMENT.clear()
        metrics.MODEL_COMPARED.clear()
        for role, reference, counts in (
                ("live", "radiologist", live),
                ("shadow", "radiologist", {m: p["radiologist"] for m, p in shadow.items()}),
                ("shadow", "live", {m: p["live"] for m, p in shadow.items()})):
            for model, confusion in bounded(counts, self.models).items():
                if confusion.assessed:
                    metrics.MODEL_AGREEMENT.labels(model, role, reference).set(
                        (confusion.tp + confusion.tn) / confusion.assessed)
                metrics.MODEL_COMPARED.labels(model, role, reference).set(confusion.assessed)


def bounded(counts: dict[str, Confusion], models: frozenset[str]) -> dict[str, Confusion]:
    """``counts`` by model with the models not in ``models`` summed as "other" (pure): a
    metric label takes few values, whatever model names reads were stored with."""
    found: dict[str, Confusion] = {}
    for model, confusion in counts.items():
        key = model if model in models else "other"
        found[key] = found.get(key, Confusion()) + confusion
    return found


def _order(report: FhirReport) -> tuple[dt.datetime, str]:
    """Among reports matched by the same rule, the later wins (ties: by FHIR id)."""
    return (report.when or EARLIEST, report.fhir_id)


def _event(exam: PollExam, res: _Result) -> dict:
    return {"uid": exam.uid, "severity": res.severity, "positive": res.positive,
            "region": exam.region, "amended": exam.has_report}
