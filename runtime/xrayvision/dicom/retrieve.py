"""Query/retrieve from the configured PACS (one process per installation).

Every ``[pacs] query_interval`` seconds: C-FIND at study level for each configured modality
(CR, DX) with a StudyDate range from the day of the last successful run (``lookback_days``
back on the first run) and the extra keys of ``query_filters``; then, for each study not
yet here, C-MOVE to our own AE title (the PACS must know its address) or C-GET on the
same association, ``max_parallel`` studies at a time, each retried with back-off.

Instances arrive through the same durable record as pushed ones, one by one, so a PACS
that goes away mid-move leaves only complete instances behind; the study is marked
``failed`` and pulled again on the next run (duplicates are recognised by SOP Instance
UID). Studies that were fully retrieved, or that the PACS pushed to us, are not pulled
again. The time of the last run without failures is kept in the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from xrayvision import metrics
from xrayvision.config import Settings
from xrayvision.db import repo
from xrayvision.db.models import utcnow
from xrayvision.dicom import handlers
from xrayvision.dicom.handlers import IngestContext
from xrayvision.dicom.ingest import storage_classes

log = logging.getLogger(__name__)
STATE_KEY = "query_retrieve.last_success"
PENDING = (0xFF00, 0xFF01)


class RetrieveError(Exception):
    """The PACS could not be reached or refused the request; the message says how."""


@dataclass(frozen=True)
class RetrieveResult:
    completed: int
    failed: int
    ok: bool
    detail: str = ""


@dataclass
class RunReport:
    found: int = 0
    retrieved: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


def build_query(modality: str, since: dt.date, filters: tuple[str, ...]) -> Dataset:
    """The study-level C-FIND identifier (pure)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.StudyDate = f"{since:%Y%m%d}-"
    ds.StudyTime = ""
    ds.ModalitiesInStudy = modality
    ds.AccessionNumber = ""
    ds.PatientID = ""
    for item in filters:
        keyword, _, value = item.partition("=")
        setattr(ds, keyword.strip(), value.strip())
    return ds


def query_since(last_success: str | None, today: dt.date, lookback_days: int) -> dt.date:
    """First day to query: the day of the last successful run, else ``lookback_days`` ago."""
    if last_success:
        try:
            return dt.datetime.fromisoformat(last_success).date()
        except ValueError:
            pass
    return today - dt.timedelta(days=lookback_days)


def _associate(ae: AE, settings: Settings, **kwargs):
    pacs = settings.pacs
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, **kwargs)
    if not assoc.is_established:
        raise RetrieveError(f"association with {pacs.ae_title}@{pacs.host}:{pacs.port} "
                            "refused or failed")
    return assoc


def _scu(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dicom.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def find_studies(settings: Settings, since: dt.date) -> list[str]:
    """Study Instance UIDs the PACS has for our modalities since ``since`` (blocking)."""
    ae = _scu(settings)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, settings)
    found: dict[str, None] = {}
    try:
        for modality in settings.pacs.modalities:
            query = build_query(modality, since, settings.pacs.query_filters)
            for status, identifier in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise RetrieveError("C-FIND: connection lost or timed out")
                if status.Status in PENDING and identifier is not None:
                    uid = str(identifier.get("StudyInstanceUID", "")).strip()
                    if uid:
                        found[uid] = None
                elif status.Status != 0x0000:
                    raise RetrieveError(f"C-FIND failed with status 0x{status.Status:04X}")
    finally:
        assoc.release()
    return list(found)


def _study_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def _final(responses) -> RetrieveResult:
    completed = failed = 0
    final = None
    for status, _identifier in responses:
        if not status:
            return RetrieveResult(completed, failed, False, "connection lost or timed out")
        completed = int(status.get("NumberOfCompletedSuboperations", completed) or completed)
        failed = int(status.get("NumberOfFailedSuboperations", failed) or failed)
        final = status.Status
    if final is None:
        return RetrieveResult(completed, failed, False, "no response")
    ok = final == 0x0000 and failed == 0
    return RetrieveResult(completed, failed, ok, "" if ok else f"final status 0x{final:04X}, "
                          f"{failed} sub-operations failed")


def move_study(settings: Settings, study_uid: str) -> RetrieveResult:
    """C-MOVE of one study to our AE title (blocking)."""
    ae = _scu(settings)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, settings)
    try:
        return _final(assoc.send_c_move(_study_identifier(study_uid), settings.dicom.ae_title,
                                        StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()


def get_study(settings: Settings, study_uid: str, ctx: IngestContext) -> RetrieveResult:
    """C-GET of one study; the instances arrive on this association and are recorded by
    the same handler as the SCP's (blocking)."""
    from xrayvision.dicom.scp import TRANSFER_SYNTAXES

    ae = _scu(settings)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in storage_classes(settings):
        ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = _associate(ae, settings, ext_neg=roles,
                       evt_handlers=[(evt.EVT_C_STORE, handlers.handle_store, [ctx])])
    try:
        return _final(assoc.send_c_get(_study_identifier(study_uid),
                                       StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()


class QueryRetrieve:
    def __init__(self, settings: Settings, ctx: IngestContext, *, attempts: int = 3,
                 backoff: float = 2.0) -> None:
        self.settings = settings
        self.ctx = ctx
        self.attempts = attempts
        self.backoff = backoff

    def _retrieve(self, study_uid: str) -> RetrieveResult:
        delay, result = self.backoff, RetrieveResult(0, 0, False, "not tried")
        for attempt in range(1, self.attempts + 1):
            try:
                if self.settings.pacs.retrieve == "get":
                    result = get_study(self.settings, study_uid, self.ctx)
                else:
                    result = move_study(self.settings, study_uid)
            except (RetrieveError, OSError) as exc:
                result = RetrieveResult(0, 0, False, str(exc))
            if result.ok:
                return result
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        return result

    def run_once(self, now: dt.datetime | None = None) -> RunReport:
        """One query and the retrievals it calls for (blocking; run it in a thread)."""
        now = now or utcnow()
        db = self.ctx.db
        since = query_since(db.read_sync(repo.get_state, STATE_KEY), now.date(),
                            self.settings.pacs.lookback_days)
        report = RunReport()
        studies = find_studies(self.settings, since)
        report.found = len(studies)
        wanted = [uid for uid in studies if db.read_sync(repo.study_needs_retrieval, uid)]
        report.skipped = len(studies) - len(wanted)
        metrics.QR_STUDIES.labels("skipped").inc(report.skipped)
        with ThreadPoolExecutor(max_workers=self.settings.pacs.max_parallel,
                                thread_name_prefix="retrieve") as pool:
            for uid, result in zip(wanted, pool.map(self._retrieve, wanted), strict=True):
                db.write_sync(repo.record_retrieval, uid, done=result.ok,
                              instances=result.completed, error=result.detail)
                if result.ok:
                    report.retrieved += 1
                    metrics.QR_STUDIES.labels("retrieved").inc()
                else:
                    report.failed.append(uid)
                    metrics.QR_STUDIES.labels("failed").inc()
                    log.warning("study not retrieved; retried next run",
                                extra={"study_uid": uid, "reason": result.detail})
        if not report.failed:
            db.write_sync(repo.set_state, STATE_KEY, now.isoformat())
            metrics.QR_LAST_SUCCESS.set(now.timestamp())
        return report

    async def loop(self) -> None:
        """Runs every ``[pacs] query_interval`` seconds until cancelled."""
        last = await self.ctx.db.read(repo.get_state, STATE_KEY)
        if last:
            metrics.QR_LAST_SUCCESS.set(dt.datetime.fromisoformat(last).timestamp())
        while True:
            try:
                report = await asyncio.to_thread(self.run_once)
            except (RetrieveError, OSError) as exc:
                metrics.QR_RUNS.labels("error").inc()
                log.warning("query/retrieve run failed; retrying next interval",
                            extra={"reason": str(exc)})
            else:
                metrics.QR_RUNS.labels("ok" if not report.failed else "partial").inc()
                log.info("query/retrieve run finished", extra={
                    "found": report.found, "retrieved": report.retrieved,
                    "skipped": report.skipped, "failed": len(report.failed)})
            await asyncio.sleep(self.settings.pacs.query_interval)
