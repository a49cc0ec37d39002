"""The ``ingest`` role: the DICOM SCP and the conversion worker, run together, and with
``[pacs] host`` set, query/retrieve from the PACS (under a singleton lock)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from xrayvision.config import Settings
from xrayvision.db.engine import Database
from xrayvision.dicom.handlers import IngestContext
from xrayvision.dicom.retrieve import QueryRetrieve
from xrayvision.dicom.scp import start_scp
from xrayvision.dicom.staging import Staging
from xrayvision.dicom.worker import ConversionWorker
from xrayvision.events import Bus
from xrayvision.images import ImageStore
from xrayvision.locks import LocalLocks, SingletonLocks
from xrayvision.runtime import Runtime
from xrayvision.tasks import run_together
from xrayvision.web.health import READINESS

log = logging.getLogger(__name__)

async def run_ingest(settings: Settings, db: Database, store: ImageStore, bus: Bus,
                     locks: SingletonLocks | None = None,
                     on_listening: Callable[[], None] | None = None) -> None:
    """Listens for DICOM and converts what arrives, until cancelled; with ``[pacs] host``
    set, also queries and retrieves from the PACS (one process per installation).
    ``on_listening`` is called once the SCP accepts associations (readiness)."""
    staging = await asyncio.to_thread(Staging().open)
    if staging.swept:  # files of transfers a process that is gone left behind
        log.info("unfinished transfers removed", extra={"files": staging.swept})
    worker = ConversionWorker(settings, db, store, bus)
    ctx = IngestContext(settings, db, store, on_stored=worker.submit_threadsafe)
    try:
        await worker.start()  # so that the SCP, once listening, converts without delay
        server = await asyncio.to_thread(start_scp, settings, ctx, staging)
    except BaseException:
        worker.close()
        await asyncio.to_thread(staging.close)
        raise
    log.info("DICOM SCP listening", extra={
        "ae_title": settings.dicom.ae_title, "host": settings.dicom.host,
        "port": settings.dicom.port, "tls": settings.dicom.tls_cert is not None,
        "convert_workers": worker.workers})
    if on_listening is not None:
        on_listening()
    loops = [worker.run()]
    if settings.pacs.host:
        qr = QueryRetrieve(settings, ctx)
        loops.append((locks or LocalLocks()).run("query-retrieve", qr.loop))
    try:
        await run_together(*loops)
    finally:
        await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(staging.close)
        log.info("DICOM SCP stopped")


async def run(rt: Runtime) -> None:
    """Ready (``/readyz``) once the SCP accepts associations."""
    readiness = rt.app[READINESS]
    await run_ingest(rt.settings, rt.db, rt.store, rt.bus, rt.locks,
                     on_listening=lambda: readiness.role_up("ingest"))
