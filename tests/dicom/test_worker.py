"""The conversion worker's process pool."""

import asyncio
import multiprocessing

from xrayvision.dicom.worker import ConversionWorker
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore

from .conftest import ingest_settings


async def gone(pids: set[int], wait: float = 20) -> bool:
    for _ in range(int(wait / 0.1)):
        if not pids & {p.pid for p in multiprocessing.active_children()}:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_start_brings_every_conversion_process_up(tmp_path, db):
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_CONVERT_WORKERS="2")
    worker = ConversionWorker(settings, db, FilesystemStore(tmp_path / "images"), LocalBus())
    before = {p.pid for p in multiprocessing.active_children()}
    await worker.start()
    try:
        started = {p.pid for p in multiprocessing.active_children()} - before
        assert len(started) == 2
    finally:
        worker.close()
    assert await gone(started)
