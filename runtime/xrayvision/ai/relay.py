"""The relay loop: claims exams (or studies, read per study: ``queue.STUDIES``) and runs
the pipeline
with up to ``[relay] concurrency`` model calls in flight (vLLM batches them), wakes on
``exam.queued`` events and on a periodic sweep, renews leases during long calls, and
sleeps while no model endpoint is healthy, waking as soon as one recovers.

Any number of relay processes can run: the queue's leases keep each exam with one of them.

A database outage is waited out, however long: a slot that cannot claim waits until the
database answers; an exam whose processing hit the outage keeps its attempts (it was not
the exam's fault) and is released as soon as the database is back; exams this worker
held when the relay started (a previous run of the role died) are released at once.

Each relay beats every :data:`HEARTBEAT_SECONDS` (``workers`` table); at start and on each
beat it reclaims the exams of workers that stopped beating, or whose process on this host
is gone, so a crashed relay's exams wait seconds, not a whole lease.

Read per study, a study waits for its quiet time (``not_before``): an idle relay sleeps
until the earliest one is due (or an event, or the sweep), not a whole sweep interval.
Leases are reclaimed and released on both queues whatever this relay reads, so that
nothing held under the other setting (``[ai] read_per`` changed in a rolling update)
is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from sqlalchemy.exc import SQLAlchemyError

from xrayvision import metrics
from xrayvision.ai.client import ModelBadOutput, ModelRejected, ModelUnavailable
from xrayvision.ai.pipeline import MissingImage, Pipeline
from xrayvision.db import queue, repo
from xrayvision.db.engine import Database, is_transient
from xrayvision.db.models import utcnow
from xrayvision.events import EXAM_QUEUED, EXAM_REQUEUED, GAP, RECONNECTED, Bus
from xrayvision.tasks import run_together

log = logging.getLogger(__name__)
WAKE_EVENTS = {EXAM_QUEUED, EXAM_REQUEUED, GAP, RECONNECTED}
Context = repo.ReportContext | repo.StudyContext | None  # what a claim read
QUEUES = (queue.EXAMS, queue.STUDIES)


HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 45.0  # a worker silent this long is gone: its exams are reclaimed


def running_pids() -> frozenset[int] | None:
    """Process ids running on this host (Linux /proc); None where unknown."""
    try:
        return frozenset(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return None


class Relay:
    def __init__(self, pipeline: Pipeline, db: Database, bus: Bus, worker: str, *,
                 concurrency: int = 4, lease_seconds: float = 600, sweep_interval: float = 30,
                 max_attempts: int = 3, retry_delay: float = 30,
                 read_per_study: bool = False) -> None:
        self.pipeline = pipeline
        self.db = db
        self.bus = bus
        self.worker = worker
        self.concurrency = concurrency
        self.lease = lease_seconds
        self.sweep_interval = sweep_interval
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.per_study = read_per_study
        self.table = queue.STUDIES if read_per_study else queue.EXAMS
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._wake = asyncio.Event()

    async def _listen(self) -> None:
        with self.bus.subscribe() as events:
            async for event in events:
                if event.type in WAKE_EVENTS:
                    self._wake.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                for table in QUEUES:
                    await self.db.write(queue.reclaim_expired,
                                        max_attempts=self.max_attempts, table=table)
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.warning("lease reclaim failed", exc_info=True)
            self._wake.set()

    async def run(self) -> None:
        released = 0
        for table in QUEUES:
            released += await self.db.write_patiently(queue.release_worker, self.worker,
                                                      table=table)
        if released:  # held by this worker's previous run (the role was restarted)
            log.warning("released exams held by an earlier run of this relay",
                        extra={"count": released})
        await self.db.write_patiently(queue.heartbeat, self.worker, self.host, self.pid)
        await self._reclaim_gone()
        try:
            await run_together(self._listen(), self._sweep(), self._beat(),
                               *(self._slot() for _ in range(self.concurrency)))
        finally:
            with contextlib.suppress(Exception):
                for table in QUEUES:
                    await self.db.write(queue.release_worker, self.worker, table=table)
                await self.db.write(queue.forget_worker, self.worker)

    async def _beat(self) -> None:
        """The heartbeat, and the exams of workers whose heartbeat stopped."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self.db.write_patiently(queue.heartbeat, self.worker, self.host, self.pid)
            await self._reclaim_gone()

    async def _reclaim_gone(self) -> None:
        def reclaim(session) -> tuple[list[str], int]:
            gone = queue.gone_workers(session, stale_after=STALE_AFTER_SECONDS,
                                      me=self.worker, host=self.host, pid=self.pid,
                                      alive=running_pids())
            # both queues before the gone workers are forgotten
            return gone, sum(queue.reclaim_gone(session, gone, max_attempts=self.max_attempts,
                                                table=table) for table in QUEUES)

        gone, count = await self.db.write_patiently(reclaim)
        if gone:
            log.warning("reclaimed the exams of relay workers that stopped",
                        extra={"workers": ",".join(gone), "exams": count})
            self._wake.set()

    async def _slot(self) -> None:
        """One model call in flight at a time. After an exam is done, the transaction that
        completes it also claims this slot's next exam (one transaction per exam)."""
        client = self.pipeline.client
        following: tuple[str, Context] | None = None
        while True:
            if client.active() is None:
                if following is not None:  # claimed while finishing; give it back
                    await self._safe(queue.release, following[0], self.worker,
                                     table=self.table)
                    following = None
                await client.recovered.wait()
            claimed = following or await self.db.write_patiently(self._claim_next)
            following = None
            if claimed is None:
                self._wake.clear()
                idle = await self._idle_wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle)
                continue
            following = await self._process(*claimed)

    async def _idle_wait(self) -> float:
        """Seconds to sleep with nothing claimable: until the next study's quiet time
        ends (or a back-off), at most a sweep interval."""
        due = await self.db.read_patiently(queue.next_due, table=self.table)
        if due is None:
            return self.sweep_interval
        return min(self.sweep_interval, max(0.05, (due - utcnow()).total_seconds()))

    def _claim_next(self, session) -> tuple[str, Context] | None:
        """Claims an exam (a study) and reads what the pipeline needs of it, in one
        transaction."""
        row = queue.claim(session, self.worker, self.lease, table=self.table)
        if row is None:
            return None
        if self.per_study:
            return row.uid, repo.study_context(session, row.uid)
        return row.uid, repo.report_context(session, row.uid)

    async def _renew(self, uid: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.db.write(queue.renew, uid, self.worker, self.lease, table=self.table)

    async def _process(self, uid: str, context: Context):
        """Runs the pipeline on a claimed exam (study); returns the next claim or None."""
        renewing = asyncio.create_task(self._renew(uid))
        try:
            if isinstance(context, repo.StudyContext) or (self.per_study and context is None):
                outcome = await self.pipeline.process_study(
                    uid, self.worker, then=self._claim_next, study=context)
            else:
                outcome = await self.pipeline.process_exam(
                    uid, self.worker, then=self._claim_next, exam=context)
            metrics.EXAMS_PROCESSED.labels("done").inc()
            return outcome.following
        except ModelUnavailable as exc:
            # Not the exam's fault: it waits in the queue, its attempts untouched.
            log.warning("model unavailable; exam back in the queue",
                        extra={"uid": uid, "reason": str(exc)})
            await self._safe(queue.release, uid, self.worker, table=self.table)
            metrics.EXAMS_PROCESSED.labels("released").inc()
        except queue.LeaseLost:
            log.warning("lease lost; another worker has the exam", extra={"uid": uid})
        except SQLAlchemyError as exc:
            if not is_transient(exc):
                raise
            # The database went away mid-exam: not the exam's fault, no attempt counted.
            log.warning("database unavailable during an exam; it goes back to the queue "
                        "once the database answers", extra={"uid": uid})
            await self._safe(queue.release, uid, self.worker, table=self.table)
            metrics.EXAMS_PROCESSED.labels("released").inc()
        except Exception as exc:  # noqa: BLE001 - ModelRejected, MissingImage, bad data...
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            status = await self._safe(queue.fail, uid, self.worker, reason,
                                      max_attempts=self.max_attempts,
                                      base_delay=self.retry_delay, code=reason_code(exc),
                                      table=self.table)
            metrics.EXAMS_PROCESSED.labels("error" if status == "error" else "retry").inc()
            log.warning("exam failed", extra={"uid": uid, "reason": reason, "status": status})
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewing
        return None

    async def _safe(self, fn, *args, **kwargs):
        """A queue write that must happen, however long the database is away; None
        when the lease was lost meanwhile."""
        try:
            return await self.db.write_patiently(fn, *args, **kwargs)
        except queue.LeaseLost:
            return None


def reason_code(exc: Exception) -> str:
    """The code an exam's failed read is recorded with (``models.REASON_CODES``)."""
    if isinstance(exc, ModelRejected):
        return "model_rejected"
    if isinstance(exc, ModelBadOutput):
        return "model_bad_output"
    if isinstance(exc, MissingImage):
        return "image_missing"
    return "read_failed"


async def export_queue_metrics(db: Database, interval: float = 15.0) -> None:
    """Queue depth by status and the oldest waiting exam's age, from the database; run
    under a singleton lock so that sums across pods are right."""
    while True:
        counts = await db.read_patiently(repo.queue_counts)
        for status, count in counts.items():
            metrics.QUEUE_DEPTH.labels(status).set(count)
        oldest = await db.read_patiently(repo.oldest_claimable)
        metrics.QUEUE_OLDEST_SECONDS.set(
            max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0)
        await asyncio.sleep(interval)
