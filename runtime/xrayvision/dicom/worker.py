"""The conversion worker: received instances (status ``none``) to PNG, then ``queued``
(a known region) or ``ignore`` (no region rule matched: not an X-ray we read), or ``error`` when
the pixels cannot be converted.

Pixel work runs in a process pool, never on the event loop or in an association
thread. Work arrives from the SCP's threads (:meth:`submit_threadsafe`), and a periodic
sweep picks up whatever is still in ``none`` (left by a crash, or a missed wake-up), so
a received instance is converted even when the process died right after the ACK.

Urgent first: instances of ``urgent`` or higher priority (``[priority]`` by calling AE)
are converted before routine ones and never wait for a pause in reception; a routine
instance waiting for one steps aside when an urgent one arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from sqlalchemy.orm import Session

from xrayvision import metrics
from xrayvision.config import PRIORITIES, Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.models import ERROR, IGNORE, NONE, QUEUED, Exam
from xrayvision.dicom.convert import (
    ConversionError,
    ConvertOptions,
    convert_bytes,
    convert_file,
)
from xrayvision.events import EXAM_QUEUED, EXAM_UPDATED, Bus
from xrayvision.images import FilesystemStore, ImageStore

log = logging.getLogger(__name__)


def convert_options(settings: Settings) -> ConvertOptions:
    return ConvertOptions(
        max_side=settings.images.max_side,
        png_compression=settings.images.png_compression,
        window_index=settings.images.window_index,
        max_pixels=settings.dicom.max_pixels,
    )


def pool_size(settings: Settings) -> int:
    """``[dicom] convert_workers``, else one per core but one: a core stays free for
    receiving, which is what a sending PACS waits for (bench/README.md, "Ingest")."""
    return settings.dicom.convert_workers or max(1, (os.cpu_count() or 1) - 1)


CONVERT_NICENESS = 19


PARENT_CHECK_SECONDS = 1.0


def _start_worker(parent: int) -> None:
    """A conversion process's set-up (the pool's initializer)."""
    # Receiving and acknowledging instances is what a sending PACS waits for; conversion
    # can wait for idle CPU (measured: bench/README.md, "Ingest").
    os.nice(CONVERT_NICENESS)
    threading.Thread(target=_end_with_parent, args=(parent,), name="parent-watch",
                     daemon=True).start()


def _end_with_parent(parent: int) -> None:
    """Ends this conversion process within :data:`PARENT_CHECK_SECONDS` of its ingest
    process's death (SIGKILL, OOM kill: nothing told the pool). Whatever it was
    converting is lost with it and converted again: its exam is still ``none``."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def make_pool(workers: int) -> ProcessPoolExecutor:
    # Not fork: the parent has threads (DICOM associations, DB pool), and forking it could
    # copy a held lock into the child. Not forkserver either: its AF_UNIX socket goes in
    # the temporary folder, which for ingest may be the image volume (a network
    # filesystem, a long path) - see xrayvision.roles.ingest. Workers live as long as
    # the pool, so spawn's slower start is paid once.
    return ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                               initargs=(os.getpid(),),
                               mp_context=multiprocessing.get_context("spawn"))


def _ready() -> int:
    return os.getpid()


def _timed_convert(source: bytes | str, opts: ConvertOptions):
    started = time.perf_counter()
    png = convert_file(source, opts) if isinstance(source, str) else convert_bytes(source, opts)
    return png, time.perf_counter() - started


def no_region_reason(exam: Exam) -> str:
    """Why no region rule matched, with the header text the rules were tried on, so that
    an administrator can see which rule to add (``[regions]``)."""
    said, seen = [], set()
    for label, value in (("body part", exam.body_part), ("study", exam.study_description),
                         ("series", exam.series_description), ("protocol", exam.protocol)):
        if value and value not in seen:  # modalities often repeat one text in all three
            said.append(f"{label} {value!r}")
            seen.add(value)
    return ("no region rule matches " + ", ".join(said) if said
            else "no region rule matched (the header names no body part or description)")


class ConversionWorker:
    PAUSE = 0.2  # seconds without a new instance: the sender has paused

    def __init__(self, settings: Settings, db: Database, store: ImageStore, bus: Bus,
                 *, sweep_interval: float = 30.0) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.bus = bus
        self.opts = convert_options(settings)
        self.workers = pool_size(settings)
        self.sweep_interval = sweep_interval
        self._pool: ProcessPoolExecutor | None = None
        # (-priority, arrival order, uid): the most urgent first, then in arrival order.
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._pending: dict[str, int] = {}  # uid: its priority, while queued or converting
        self._deadlines: dict[str, float] = {}  # uid: loop time its conversion may wait to
        self._last_arrival = float("-inf")
        self._urgent_queued = 0
        self._urgent_arrived = asyncio.Event()
        # Built inside the running loop: the SCP's threads hand work over through it.
        self._loop = asyncio.get_running_loop()

    def submit_threadsafe(self, uid: str, priority: int = 0) -> None:
        """Asks for ``uid``, just received with ``priority``, to be converted; callable
        from any thread, never blocks."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._arrived, uid, priority)

    def _arrived(self, uid: str, priority: int = 0) -> None:
        self._last_arrival = self._loop.time()
        if uid not in self._pending:
            wait = 0.0 if self._urgent(priority) else self.settings.dicom.convert_defer
            self._deadlines[uid] = self._last_arrival + wait
        self._submit(uid, priority)

    @staticmethod
    def _urgent(priority: int) -> bool:
        return priority >= PRIORITIES["urgent"]

    def _submit(self, uid: str, priority: int = 0) -> None:
        if uid not in self._pending:
            self._pending[uid] = priority
            self._put(uid, priority)

    def _put(self, uid: str, priority: int) -> None:
        self._queue.put_nowait((-priority, next(self._order), uid))
        if self._urgent(priority):
            self._urgent_queued += 1
            self._urgent_arrived.set()

    async def _take(self) -> str:
        _, _, uid = await self._queue.get()
        if self._urgent(self._pending.get(uid, 0)):
            self._urgent_queued -= 1
            if not self._urgent_queued:
                self._urgent_arrived.clear()
        return uid

    async def _yield_to_receiving(self, uid: str) -> bool:
        """Waits while instances keep arriving, until a pause of :data:`PAUSE` seconds
        or ``[dicom] convert_defer`` seconds after ``uid`` arrived (urgent ones: none).
        A sending PACS waits for each response, and on a small node conversion next to
        reception slows it (bench/README.md, "Ingest"); once an exam's time is up it is
        converted whatever arrives, so under sustained load conversion runs as it would
        without this. Returns False when an urgent instance arrived meanwhile: this one
        goes back to the queue (keeping its deadline) and the urgent one is taken."""
        deadline = self._deadlines.get(uid, 0.0)
        while True:
            if self._urgent_queued and not self._urgent(self._pending.get(uid, 0)):
                return False
            now = self._loop.time()
            until = min(self._last_arrival + self.PAUSE, deadline)
            if now >= until:
                self._deadlines.pop(uid, None)
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent_arrived.wait(), until - now)

    async def start(self) -> None:
        """Starts the conversion processes and waits until they answer. A spawned process
        imports the application for about 2 s of CPU: started on the first instance,
        that would compete with the receiving of the next ones (and delay the first
        conversion). Optional: :meth:`run` starts the pool itself when needed."""
        if self._pool is None:
            self._pool = make_pool(self.workers)
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _ready)
                               for _ in range(self.workers)))

    async def run(self) -> None:
        """Converts until cancelled (then the pool is shut down)."""
        if self._pool is None:
            self._pool = make_pool(self.workers)
        consumers = [asyncio.create_task(self._consume()) for _ in range(self.workers)]
        try:
            while True:
                # a database outage is waited out here (the SCP refuses meanwhile)
                for uid in await self.db.read_patiently(repo.exams_with_status, NONE, 10_000):
                    self._submit(uid)
                await asyncio.sleep(self.sweep_interval)
        finally:
            for task in consumers:
                task.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            self.close()

    def close(self) -> None:
        """Shuts the conversion processes down (pending conversions are dropped: those
        exams stay in ``none`` and the next start's sweep converts them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def drain(self) -> None:
        """Waits until everything submitted so far is converted (for import and tests)."""
        await self._queue.join()

    async def _consume(self) -> None:
        while True:
            uid = await self._take()
            done = True
            try:
                if not await self._yield_to_receiving(uid):
                    done = False
                    self._put(uid, self._pending.get(uid, 0))  # after the urgent one
                    continue
                await self.convert(uid)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad exam never stops the worker
                log.exception("conversion failed unexpectedly; the sweep retries it",
                              extra={"uid": uid})
            finally:
                if done:
                    self._pending.pop(uid, None)
                self._queue.task_done()

    async def _run_in_pool(self, source: bytes | str):
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                return await loop.run_in_executor(self._pool, _timed_convert, source, self.opts)
            except BrokenProcessPool:
                # A worker died (e.g. killed for memory); replace the pool and retry once.
                log.warning("conversion pool broken; restarting it")
                if self._pool is not None:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = make_pool(self.workers)
                if attempt == 2:
                    raise ConversionError(
                        "the conversion process died twice on this image") from None
        raise AssertionError("unreachable")

    def _source(self, uid: str) -> bytes | str | None:
        """A path the pool can read itself (filesystem store), else the bytes."""
        if isinstance(self.store, FilesystemStore):
            path = self.store.path(uid, "dcm")
            return str(path) if path.is_file() else None
        return self.store.get(uid, "dcm")

    async def convert(self, uid: str) -> str | None:
        """Converts one exam; returns its new status (None when already converted)."""
        source = await asyncio.to_thread(self._source, uid)
        missing = "received DICOM missing from the store"
        if source is None:
            return await self._finish(uid, ERROR, missing, "dicom_missing")
        try:
            converted, seconds = await self._run_in_pool(source)
        except FileNotFoundError:
            return await self._finish(uid, ERROR, missing, "dicom_missing")
        except ConversionError as exc:
            log.warning("instance cannot be converted", extra={"uid": uid, "reason": str(exc)})
            return await self._finish(uid, ERROR, f"conversion failed: {exc}", "decode_failed")
        metrics.CONVERT_SECONDS.observe(seconds)
        await asyncio.to_thread(self.store.put, uid, "png", converted.png)
        row = await self.db.read(repo.get_exam, uid)
        if row is not None and row.exam.region:
            return await self._finish(uid, QUEUED)
        reason = no_region_reason(row.exam) if row is not None else "no region rule matched"
        return await self._finish(uid, IGNORE, reason, "no_region_rule")

    async def _finish(self, uid: str, status: str, error: str = "",
                      code: str = "") -> str | None:
        ai = self.settings.ai

        def finish(session: Session) -> Exam | None:
            exam = repo.finish_conversion(session, uid, status, error, code)
            if exam is not None:  # its study, rolled up (and queued, read per study)
                repo.refresh_study(
                    session, exam.study_uid, uid, became_readable=status == QUEUED,
                    read_per_study=ai.read_per == "study", quiet=ai.study_quiet,
                    threshold=self.settings.processing.severity_threshold)
            if exam is not None and status == QUEUED:
                self.bus.publish_in(session, EXAM_QUEUED, uid=uid, region=exam.region,
                                    priority=exam.priority)
            elif exam is not None:
                self.bus.publish_in(session, EXAM_UPDATED, uid=uid, status=status)
            return exam

        exam = await self.db.write(finish)
        if exam is None:
            return None
        metrics.CONVERSIONS.labels(status, exam.region or "none").inc()
        if not self.settings.dicom.keep_dicom and status != ERROR:
            await asyncio.to_thread(self.store.delete, uid, "dcm")
        log.info("instance converted", extra={"uid": uid, "status": status,
                                              "region": exam.region})
        return status
