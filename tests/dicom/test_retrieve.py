"""Query/retrieve against real PACS peers: Orthanc (C-MOVE and C-GET) and DCMTK dcmqrscp."""

import asyncio
import dataclasses
import datetime as dt

import pytest
from pydicom.uid import generate_uid

from support import records
from support.pacs import DcmQrScp, Orthanc, storescu
from support.xrays import make_xray, write
from xrayvision.db import repo
from xrayvision.db.models import QUEUED, Retrieval
from xrayvision.dicom.handlers import IngestContext
from xrayvision.dicom.retrieve import QueryRetrieve, build_query, query_since

from .conftest import ingest_settings, running_ingest

TODAY = dt.datetime.now(dt.UTC).date()


def test_build_query_and_window():
    ds = build_query("DX", dt.date(2026, 11, 1), ("InstitutionName=Spital Judetean",))
    assert ds.QueryRetrieveLevel == "STUDY" and ds.StudyDate == "20261101-"
    assert ds.ModalitiesInStudy == "DX" and ds.InstitutionName == "Spital Judetean"
    assert query_since(None, dt.date(2026, 11, 25), 2) == dt.date(2026, 11, 23)
    assert query_since("2026-11-24T03:00:00+00:00", dt.date(2026, 11, 25), 2) == \
        dt.date(2026, 11, 24)
    assert query_since("garbage", dt.date(2026, 11, 25), 0) == dt.date(2026, 11, 25)


def study(folder, name, count, *, rows=64, cols=64):
    study_uid = generate_uid()
    return [write(make_xray(uid=generate_uid(), study_uid=study_uid, study_date=TODAY,
                            rows=rows, cols=cols, seed=i), folder / f"{name}-{i}.dcm")
            for i in range(count)]


async def until(predicate, wait=60.0):
    for _ in range(int(wait / 0.2)):
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached in time")


def pacs_settings(settings, pacs, retrieve, interval="1"):
    pacs_part = dataclasses.replace(settings.pacs, host="127.0.0.1", port=pacs.port,
                                    ae_title=pacs.aet, retrieve=retrieve,
                                    query_interval=float(interval), lookback_days=1)
    return dataclasses.replace(settings, pacs=pacs_part)


@pytest.mark.parametrize("peer,retrieve", [(Orthanc, "move"), (Orthanc, "get"),
                                           (DcmQrScp, "move")])
async def test_loop_pulls_new_studies_once(tmp_path, db, peer, retrieve):
    base = ingest_settings(tmp_path)
    pacs = peer(tmp_path / "pacs", {"XRAYVISION": ("127.0.0.1", base.dicom.port)}).start()
    try:
        pushed = study(tmp_path / "in", "pushed", 2)
        new = study(tmp_path / "in", "new", 3)
        storescu(pacs.aet, pacs.port, pushed + new)
        settings = pacs_settings(base, pacs, retrieve)
        async with running_ingest(base, db, tmp_path) as ingest:
            # The first study also reached us before, pushed by the PACS.
            assert (await ingest.storescu(*pushed)).returncode == 0
        async with running_ingest(settings, db, tmp_path):
            async def all_there():
                counts = await db.read(repo.queue_counts)
                return counts[QUEUED] == 5

            await until(all_there)
            await asyncio.sleep(2.5)  # two more runs: nothing is pulled again
            retrievals = await db.read(lambda s: s.query(Retrieval).all())
            assert [(r.status, r.attempts, r.instances) for r in retrievals] == [("done", 1, 3)]
            assert await db.read(records.count_exams) == 5
            assert await db.read(repo.get_state, "query_retrieve.last_success")
    finally:
        pacs.stop()


async def test_pacs_going_away_mid_move_leaves_whole_instances_and_is_retried(tmp_path, db):
    base = ingest_settings(tmp_path)
    folder = tmp_path / "pacs"
    pacs = Orthanc(folder, {"XRAYVISION": ("127.0.0.1", base.dicom.port)}).start()
    files = study(tmp_path / "in", "big", 40, rows=700, cols=700)
    storescu(pacs.aet, pacs.port, files)
    settings = pacs_settings(base, pacs, "move")
    async with running_ingest(base, db, tmp_path) as ingest:
        ctx = IngestContext(settings, db, ingest.store, on_stored=lambda uid, priority: None)
        qr = QueryRetrieve(settings, ctx, attempts=1, backoff=0.1)
        run = asyncio.create_task(asyncio.to_thread(qr.run_once))

        async def some_arrived():
            return await db.read(records.count_exams) > 0

        await until(some_arrived)
        pacs.kill()
        report = await run
        assert report.failed and not report.retrieved
        received = await db.read(records.count_exams)
        assert 0 < received < 40, "the move was cut short"
        counts = await ingest.converted()
        assert counts["error"] == 0, "every recorded instance is whole"
        retrieval = (await db.read(lambda s: s.query(Retrieval).all()))[0]
        assert retrieval.status == "failed"

        pacs = Orthanc(folder, {"XRAYVISION": ("127.0.0.1", base.dicom.port)},
                       port=settings.pacs.port).start()  # back, same storage and port
        try:
            report = await asyncio.to_thread(qr.run_once)
            assert report.retrieved == 1 and not report.failed
            await ingest.converted()
            assert await db.read(records.count_exams) == 40
            assert (await db.read(repo.queue_counts))[QUEUED] == 40
        finally:
            pacs.stop()
