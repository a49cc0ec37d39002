"""The results sender: claims what the outbox holds and sends it, the SRs built and
C-STOREd to the PACS by :func:`store_results` (one association per part of a batch, in
the ``[results] workers`` processes, or a thread without) and the FHIR resources written
to the HIS by conditional update (:class:`FhirResults`). It runs beside the relay (the
relay role) and never in its path: a read is stored with its outbox rows in one
transaction, and what happens to a send after that is the sender's alone.

Outcomes of a send (:class:`Delivery`): delivered; failed and worth another try later
(nothing answered, association rejected or aborted, "out of resources" 0xA7xx, HTTP
429/5xx/timeouts, 401/403 that a corrected secret cures); or refused for good
(``permanent``: no presentation context for the SOP class, any other C-STORE failure
status, HTTP 400/404/405/409/412/422): dead-lettered at once with the receiver's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import socket
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from xrayvision import metrics
from xrayvision.ai.parse import parse_report
from xrayvision.config import DicomPeer, Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.models import DEAD, DEST_DICOM, DEST_FHIR, ResultOutbox, utcnow
from xrayvision.fhir.client import (
    FhirBadResponse,
    FhirClient,
    FhirError,
    FhirHTTPError,
    FhirServer,
    FhirUnavailable,
    redact,
)
from xrayvision.images import ImageStore
from xrayvision.results.fhir_resources import (
    diagnostic_report,
    identifier_query,
    observation,
    subject,
)
from xrayvision.results.sc import build_sc
from xrayvision.results.sr import (
    COMPREHENSIVE_3D_SR,
    COMPREHENSIVE_SR,
    SrUids,
    build_srs,
    sr_uids,
)

log = logging.getLogger(__name__)

# C-STORE statuses that are a success (warnings: coerced, elements discarded, not checked).
STORE_OK = {0x0000, 0xB000, 0xB006, 0xB007}
# HTTP statuses a retry cannot change.
FHIR_PERMANENT = {400, 404, 405, 409, 410, 412, 422}
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
PREDECESSORS = 10  # earlier versions named in an SR's Predecessor Documents Sequence
# A-ASSOCIATE-AC presentation context results, in words.
_CONTEXT_RESULT = {1: "user rejection", 2: "no reason given",
                   3: "SOP class not supported", 4: "transfer syntaxes not supported"}


class ResultsConfigError(Exception):
    """``[results]`` TLS files are missing or unusable."""


@dataclass(frozen=True)
class Delivery:
    """What became of one result's send."""

    row_id: int
    ok: bool
    reason: str = ""
    permanent: bool = False


@dataclass(frozen=True)
class DicomJob:
    """What C-STOREs of results need, picklable (for the worker processes): the PACS, our
    AE title, TLS files, the timeout and our UID root."""

    peer: DicomPeer
    calling_aet: str
    timeout: float
    uid_root: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    secondary_capture: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DicomJob:
        r = settings.results
        assert r.dicom_destination is not None
        return cls(r.dicom_destination, settings.dicom.ae_title, r.timeout, r.uid_root,
                   r.dicom_tls_ca, r.dicom_tls_cert, r.dicom_tls_key, r.secondary_capture)

    def tls(self) -> ssl.SSLContext | None:
        """The C-STORE's TLS context (the PACS verified by ``tls_ca``; our certificate
        when the PACS asks for one); None: plain TCP. Raises ResultsConfigError."""
        if self.tls_ca is None and self.tls_cert is None:
            return None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ResultsConfigError("[results] dicom_tls_cert and dicom_tls_key go together")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.tls_ca is not None:
                context.load_verify_locations(cafile=str(self.tls_ca))
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ResultsConfigError(f"[results] DICOM TLS files unusable: {exc}") from None
        return context


@dataclass(frozen=True)
class SrItem:
    """One result to C-STORE: its row, what it says and the SRs it supersedes."""

    row_id: int
    doc: repo.ReadDocument
    previous: tuple[SrUids, ...] = ()
    png: bytes | None = None  # its first image, for the Secondary Capture


def store_results(job: DicomJob, items: Sequence[SrItem]) -> list[Delivery]:
    """Builds each result's SRs and C-STOREs them all on one association (blocking: run in
    a worker process or a thread). A read whose SRs cannot be made is that result's
    failure (for good), not the batch's."""
    built: list[tuple[int, Sequence[Dataset]]] = []
    out: list[Delivery] = []
    for item in items:
        try:
            report = parse_report(item.doc.text)
            datasets = build_srs(item.doc, uid_root=job.uid_root, findings=report.findings,
                                 impression=report.impression, previous=item.previous)
            if item.png is not None:
                datasets.append(build_sc(item.doc, item.png, uid_root=job.uid_root,
                                         impression=report.impression))
            built.append((item.row_id, datasets))
        except Exception as exc:  # noqa: BLE001 - one bad read must not stop the others
            out.append(Delivery(item.row_id, False, f"the SR could not be made: "
                                f"{type(exc).__name__}: {exc}", permanent=True))
    store = DicomStore(job.peer, job.calling_aet, tls=job.tls(), timeout=job.timeout,
                       secondary_capture=job.secondary_capture)
    return out + store.send(built)


class DicomStore:
    """C-STOREs results' datasets to the PACS (blocking: run it in a thread)."""

    def __init__(self, peer: DicomPeer, calling_aet: str, *, tls: ssl.SSLContext | None,
                 timeout: float, secondary_capture: bool = False) -> None:
        self.peer = peer
        self.calling_aet = calling_aet
        self.tls = tls
        self.timeout = timeout
        self.sop_classes = [COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR]
        if secondary_capture:
            self.sop_classes.append(SECONDARY_CAPTURE)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class in self.sop_classes:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae

    def send(self, items: Sequence[tuple[int, Sequence[Dataset]]]) -> list[Delivery]:
        """Each item (a result: its row id and datasets) on one association; a result is
        delivered when every one of its datasets was stored."""
        if not items:
            return []
        ae = self._ae()
        tls_args = (self.tls, self.peer.host) if self.tls is not None else None
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title,
                             tls_args=tls_args)
        if not assoc.is_established:
            refused = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax]
            if refused and not assoc.accepted_contexts:
                # (pynetdicom aborts an association without any accepted context)
                reason = f"{self.peer} accepts none of " + ", ".join(
                    f"{UID(cx.abstract_syntax or '').name} "
                    f"({_CONTEXT_RESULT.get(cx.result or 0, str(cx.result))})"
                    for cx in refused)
                return [Delivery(row_id, False, reason, permanent=True) for row_id, _ in items]
            if assoc.is_rejected:
                reason = f"association rejected by {self.peer}"
            elif assoc.is_aborted and assoc.accepted_contexts:
                reason = f"association aborted by {self.peer}"
            else:  # (pynetdicom reports a refused connection as an abort too)
                reason = f"no answer from {self.peer}: not reachable, or it aborted"
            return [Delivery(row_id, False, reason) for row_id, _ in items]
        _no_delay(assoc)
        out: list[Delivery] = []
        try:
            for index, (row_id, datasets) in enumerate(items):
                delivery = self._store(assoc, row_id, datasets)
                out.append(delivery)
                if not assoc.is_established:  # the rest wait for the next try
                    out.extend(Delivery(r, False, f"association to {self.peer} lost")
                               for r, _ in items[index + 1:])
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def _store(self, assoc, row_id: int, datasets: Sequence[Dataset]) -> Delivery:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted presentation context for the class
                return Delivery(row_id, False, f"{self.peer} does not accept "
                                f"{ds.SOPClassUID.name}: {exc}", permanent=True)
            if not status:
                return Delivery(row_id, False, f"no C-STORE response from {self.peer}")
            code = int(status.Status)
            if code in STORE_OK:
                continue
            comment = str(status.get("ErrorComment", "") or "")
            reason = (f"{self.peer} refused {ds.SOPClassUID.name} with status "
                      f"0x{code:04X}{': ' + comment if comment else ''}")
            return Delivery(row_id, False, reason, permanent=not 0xA700 <= code <= 0xA7FF)
        return Delivery(row_id, True)


def _no_delay(assoc) -> None:
    """TCP_NODELAY on the association's socket: a C-STORE is a command PDU and a dataset
    PDU, and Nagle's algorithm against the PACS's delayed ACK made each wait ~40 ms
    (11 SR/s to Orthanc instead of hundreds; bench/README.md). pynetdicom does not set it."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FhirResults:
    """Writes a result's Observation and DiagnosticReport to the HIS."""

    def __init__(self, client: FhirClient, identifier_system: str) -> None:
        self.client = client
        self.identifier_system = identifier_system

    async def send(self, row_id: int, doc: repo.ReadDocument, sr_uid: str) -> Delivery:
        report = parse_report(doc.text)
        try:
            patient_id = None
            if doc.patient_id:
                found = await self.client.find_patients(identifier=doc.patient_id,
                                                        system=self.identifier_system)
                patient_id = found[0].get("id") if len(found) == 1 else None
            patient = subject(doc, patient_id, self.identifier_system)
            stored = await self.client.conditional_update(
                "Observation", identifier_query(doc), observation(doc, patient, sr_uid))
            await self.client.conditional_update(
                "DiagnosticReport", identifier_query(doc),
                diagnostic_report(doc, patient, str(stored.get("id", "")),
                                  impression=report.impression))
        except FhirHTTPError as exc:
            permanent = exc.status in FHIR_PERMANENT
            return Delivery(row_id, False, f"HIS refused it: {exc}", permanent=permanent)
        except (FhirUnavailable, FhirBadResponse, FhirError) as exc:
            return Delivery(row_id, False, f"HIS unavailable: {exc}")
        return Delivery(row_id, True)


@dataclass(frozen=True)
class Prepared:
    """A claimed result with what it says (None: the read is gone) and, for the PACS,
    the SRs sent before for the same read (which its SRs supersede)."""

    row: ResultOutbox
    doc: repo.ReadDocument | None
    previous: tuple[SrUids, ...] = ()
    png: bytes | None = None


class ResultSender:
    """Sends the outbox's due results until cancelled (one per relay process; several
    processes share the outbox through leases)."""

    def __init__(self, settings: Settings, db: Database, worker: str, *,
                 fhir: FhirClient | None = None, poll: float = 1.0,
                 lease_seconds: float | None = None, store: ImageStore | None = None) -> None:
        self.settings = settings
        self.store = store  # the PNGs, for the Secondary Capture
        self.results = settings.results
        self.db = db
        self.worker = f"{worker}:results"
        self.poll = poll
        # How long a claimed result stays with this sender before another may send it
        # (this one died mid-send): beyond any send's time.
        self.lease_seconds = lease_seconds or max(60.0, self.results.timeout * 4)
        self.dicom: DicomJob | None = None
        if self.results.dicom_destination is not None:
            self.dicom = DicomJob.from_settings(settings)
            self.dicom.tls()  # (bad TLS files: a clear error now, not at the first send)
        self._pool: ProcessPoolExecutor | None = None
        self.fhir: FhirResults | None = None
        if self.results.fhir_url and fhir is not None:
            self.fhir = FhirResults(fhir, settings.fhir.identifier_system)
        self._metrics_at = 0.0

    @staticmethod
    def fhir_server(settings: Settings) -> FhirServer:
        r = settings.results
        return FhirServer(url=r.fhir_url.rstrip("/"), username=r.fhir_username,
                          password=r.fhir_password, ca_bundle=r.fhir_ca_bundle,
                          timeout=r.timeout, max_attempts=1)

    async def run(self) -> None:
        log.info("results sender started",
                 extra={"destinations": ",".join(self.results.enabled)})
        try:
            while True:
                claimed = await self.send_due()
                await self.export_metrics()
                if claimed < self.results.batch:
                    # Not a full batch: what comes next waits a poll and goes with others
                    # (a claim, the reads and the marks cost the relay per batch, not per
                    # result: bench/README.md); a full one: more are due now.
                    await asyncio.sleep(self.poll)
        finally:
            self.close()

    def close(self) -> None:
        """Stops the worker processes (when there are)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _workers(self) -> ProcessPoolExecutor | None:
        """The SR worker processes, started at the first C-STORE; None: in a thread."""
        if self.results.workers and self._pool is None:
            # spawn, as the conversion workers (xrayvision.dicom.worker.make_pool): this
            # process has threads; the workers import what building an SR needs once.
            self._pool = ProcessPoolExecutor(
                max_workers=self.results.workers,
                mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def export_metrics(self, every: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._metrics_at < every:
            return
        self._metrics_at = now
        depths = await self.db.read(repo.outbox_depths, self.results.enabled)
        current = utcnow()
        for depth in depths:
            metrics.RESULTS_PENDING.labels(depth.destination).set(depth.pending)
            metrics.RESULTS_DEAD.labels(depth.destination).set(depth.dead)
            age = 0.0
            if depth.oldest_pending is not None:
                age = max(0.0, (current - depth.oldest_pending).total_seconds())
            metrics.RESULTS_OLDEST_SECONDS.labels(depth.destination).set(age)

    async def send_due(self) -> int:
        """Claims and sends one batch; returns how many results it claimed."""
        rows = await self.db.write(repo.claim_results, self.worker, limit=self.results.batch,
                                   lease_seconds=self.lease_seconds)
        if not rows:
            return 0
        prepared = await self.db.read(self._prepare, rows)
        deliveries: list[Delivery] = []
        gone = [p for p in prepared if p.doc is None]
        deliveries += [Delivery(p.row.id, False, "the AI read is no longer stored",
                                permanent=True) for p in gone]
        dicom = [p for p in prepared if p.doc is not None and p.row.destination == DEST_DICOM]
        fhir = [p for p in prepared if p.doc is not None and p.row.destination == DEST_FHIR]
        if dicom:
            deliveries += await self._send_dicom(dicom)
        for item in fhir:
            deliveries.append(await self._send_fhir(item))
        attempts = {p.row.id: (p.row.attempts, p.row.destination) for p in prepared}
        outcomes = await self.db.write(self._record, deliveries, attempts)
        for delivery, status in outcomes:
            tries, destination = attempts[delivery.row_id]
            if status == "sent":
                metrics.RESULTS_SENT.labels(destination).inc()
                continue
            metrics.RESULTS_FAILED.labels(destination,
                                          "dead" if status == DEAD else "retry").inc()
            log.log(logging.ERROR if status == DEAD else logging.WARNING,
                    "result not delivered; " + ("given up" if status == DEAD else "will retry"),
                    extra={"result": delivery.row_id, "destination": destination,
                           "attempt": tries, "reason": redact(delivery.reason)})
        return len(rows)

    def _prepare(self, session, rows: list[ResultOutbox]) -> list[Prepared]:
        """What each claimed result says, and the SRs each sent before (a few queries
        for the whole batch)."""
        docs = repo.read_documents(session, [(r.uid, r.version, r.review) for r in rows])
        dicom = [r for r, d in zip(rows, docs, strict=True)
                 if d is not None and r.destination == DEST_DICOM]
        earlier = repo.sent_before(session, dicom)
        root = self.results.uid_root
        return [Prepared(row, doc, tuple(sr_uids(root, e.uid, e.version, e.review)
                                         for e in earlier.get(row.id, [])[-PREDECESSORS:]),
                         self._first_png(doc) if row in dicom else None)
                for row, doc in zip(rows, docs, strict=True)]

    def _first_png(self, doc: repo.ReadDocument | None) -> bytes | None:
        """The PNG of the read's first image, for the Secondary Capture (None: not asked
        for, or gone: the SRs go without it)."""
        if not self.results.secondary_capture or self.store is None or doc is None:
            return None
        return self.store.get(doc.images[0].uid, "png")

    async def _send_dicom(self, items: list[Prepared]) -> list[Delivery]:
        """The batch's SRs built and C-STOREd: split between the worker processes (an
        association each), or in a thread of this process without workers."""
        if self.dicom is None:
            return [Delivery(p.row.id, False, "[results] dicom_destination is not set")
                    for p in items]
        jobs = [SrItem(p.row.id, p.doc, p.previous, p.png) for p in items if p.doc is not None]
        started = time.monotonic()
        pool = self._workers()
        if pool is None:
            deliveries = await asyncio.to_thread(store_results, self.dicom, jobs)
        else:
            loop = asyncio.get_running_loop()
            parts = [jobs[i::self.results.workers] for i in range(self.results.workers)]
            try:
                done = await asyncio.gather(*(loop.run_in_executor(pool, store_results,
                                                                   self.dicom, part)
                                              for part in parts if part))
            except BrokenProcessPool:
                # (a worker died: killed, out of memory) the batch is tried again later
                # with new workers; which of it the PACS already has, it keeps once
                self.close()
                return [Delivery(j.row_id, False, "the SR worker process stopped")
                        for j in jobs]
            deliveries = [d for part in done for d in part]
        metrics.RESULTS_SEND_SECONDS.labels(DEST_DICOM).observe(time.monotonic() - started)
        return deliveries

    async def _send_fhir(self, item: Prepared) -> Delivery:
        if self.fhir is None:
            return Delivery(item.row.id, False, "[results] fhir_url is not set")
        assert item.doc is not None
        started = time.monotonic()
        uids = sr_uids(self.results.uid_root, item.doc.key, item.doc.version, item.doc.review)
        sr_uid = uids.measurements if self.dicom is not None else ""
        delivery = await self.fhir.send(item.row.id, item.doc, sr_uid)
        metrics.RESULTS_SEND_SECONDS.labels(DEST_FHIR).observe(time.monotonic() - started)
        return delivery

    def _record(self, session, deliveries: list[Delivery],
                attempts: dict[int, tuple[int, str]]) -> list[tuple[Delivery, str]]:
        """Each delivery's outcome on its row (those still held): sent, pending, dead."""
        delivered = {d.row_id: d for d in deliveries if d.ok}
        out = [(delivered[i], "sent")
               for i in repo.results_sent(session, list(delivered), self.worker)]
        for d in deliveries:
            if d.ok:
                continue
            status = repo.result_failed(
                session, d.row_id, self.worker, d.reason, attempts=attempts[d.row_id][0],
                max_attempts=self.results.max_attempts, base_delay=self.results.retry_delay,
                permanent=d.permanent)
            if status is not None:
                out.append((d, status))
        return out
