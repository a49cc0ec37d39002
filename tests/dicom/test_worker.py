"""The conversion worker's process pool."""

import asyncio
import contextlib
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


@contextlib.asynccontextmanager
async def conversions(tmp_path, db, **env):
    """A running worker whose conversion only notes when it started: {uid: loop time}."""
    worker = ConversionWorker(ingest_settings(tmp_path, **env), db,
                              FilesystemStore(tmp_path / "images"), LocalBus())
    loop = asyncio.get_running_loop()
    started = {}

    async def convert(uid):
        started.setdefault(uid, loop.time())

    worker.convert = convert
    runner = asyncio.create_task(worker.run())
    try:
        yield worker, started
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def until_started(started, count, wait=10.0):
    for _ in range(int(wait / 0.1)):
        if len(started) >= count:
            return
        await asyncio.sleep(0.1)


async def converted_at(tmp_path, db, defer: float, arrivals: int, every: float):
    """Loop times at which the first instance's conversion started and the last instance
    arrived, with ``arrivals`` instances ``every`` seconds apart."""
    loop = asyncio.get_running_loop()
    async with conversions(tmp_path, db, XRAYVISION_DICOM_CONVERT_DEFER=str(defer)) as (
            worker, started):
        for n in range(arrivals):
            worker.submit_threadsafe(f"1.2.3.{n}")
            await asyncio.sleep(every)
        last = loop.time() - every
        await until_started(started, 1)
        return started["1.2.3.0"], last


async def test_conversion_waits_while_instances_keep_arriving(tmp_path, db):
    first, last_arrival = await converted_at(tmp_path, db, defer=30, arrivals=8, every=0.1)
    assert first >= last_arrival + ConversionWorker.PAUSE * 0.9


async def test_conversion_waits_no_longer_than_convert_defer(tmp_path, db):
    first, last_arrival = await converted_at(tmp_path, db, defer=0.3, arrivals=15, every=0.1)
    assert first < last_arrival - 0.5  # started while instances still arrived


async def test_convert_defer_zero_converts_at_once(tmp_path, db):
    first, last_arrival = await converted_at(tmp_path, db, defer=0, arrivals=15, every=0.1)
    assert first < last_arrival - 1.0


async def test_an_urgent_instance_does_not_wait_for_a_pause_in_a_burst(tmp_path, db):
    """A burst of routine instances, a ``stat`` one in the middle: the stat one is
    converted at once (not after the burst or convert_defer), ahead of the routine ones
    that arrived before it and were waiting."""
    loop = asyncio.get_running_loop()
    async with conversions(tmp_path, db, XRAYVISION_DICOM_CONVERT_DEFER="30",
                           XRAYVISION_DICOM_CONVERT_WORKERS="1") as (worker, started):
        for n in range(20):
            if n == 8:
                arrived = loop.time()
                worker.submit_threadsafe("9.9.9", 3)  # stat
            worker.submit_threadsafe(f"1.2.3.{n}", 0)
            await asyncio.sleep(0.1)
        last = loop.time()
        await until_started(started, 21)
    assert started["9.9.9"] - arrived < 0.5  # while the burst went on
    assert min(started, key=started.get) == "9.9.9"  # before the 8 routine ones before it
    routine = [t for uid, t in started.items() if uid != "9.9.9"]
    assert min(routine) >= last  # they waited for the pause, as before
    assert len(started) == 21 and worker._pending == {}  # every one converted once
