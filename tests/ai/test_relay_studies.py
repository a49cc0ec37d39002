"""Read per study: the relay reads each study once its images stopped arriving (a stat
study at once), all its images (up to ``max_images``) in one request that names the
views; a relay that dies mid-read loses nothing and the study is read once."""

import asyncio
import contextlib
import socket

import aiohttp

from support import records
from support.model_stub import images_of
from xrayvision.ai.client import ModelClient
from xrayvision.ai.pipeline import Pipeline
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.relay import Relay, running_pids
from xrayvision.ai.text import TextServices
from xrayvision.db import queue, repo
from xrayvision.db.models import DONE, QUEUED, AIReport, Study, utcnow
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore

from .test_relay import PNG, eps, until


def receive(db, store, uid, study, *, projection="PA", priority=0, quiet=0.5):
    """An image recorded and converted as ingest does it (PNG stored, the conversion's
    end refreshing the study)."""
    store.put(uid, "png", PNG + uid.encode())

    def write(session):
        records.add_exam(session, ExamInfo(uid=uid, study_uid=study, region="chest",
                                           projection=projection, priority=priority),
                         PatientInfo(cnp="1800101123456", sex="F"))
        repo.finish_conversion(session, uid, QUEUED)
        repo.refresh_study(session, study, uid, became_readable=True, read_per_study=True,
                           quiet=quiet, threshold=5)
    db.write_sync(write)


@contextlib.asynccontextmanager
async def study_relay(db, store, endpoints, *, max_images=4, worker="study-worker",
                      notify=None):
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(endpoints, session, backoff=0.01, max_attempts=2)
        pipeline = Pipeline(TextServices(client, load_prompts(None)), db, store, bus,
                            max_images=max_images, notify=notify)
        relay = Relay(pipeline, db, bus, worker, concurrency=2, lease_seconds=30,
                      sweep_interval=5, max_attempts=2, retry_delay=0.01,
                      read_per_study=True)
        tasks = [asyncio.create_task(relay.run()),
                 asyncio.create_task(client.health_loop(0.2))]
        try:
            yield tasks[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def reports(stub):
    """The report requests the stub answered (not the CHK ones)."""
    return [b for b in stub.state.requests if "JSON" not in b["messages"][0]["content"]]


async def until_studies_done(db, keys, wait=20.0):
    for _ in range(int(wait / 0.05)):
        statuses = await db.read(lambda s: dict(s.execute(
            Study.__table__.select().with_only_columns(Study.uid, Study.status)).all()))
        if all(statuses.get(k) == DONE for k in keys):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"studies not read: {statuses}")


async def test_each_study_is_read_once_with_its_images_stat_first(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.max_images = 2  # the server allows two images per request
    store = FilesystemStore(tmp_path)
    # interleaved, as two senders deliver them
    receive(db, store, "1.1", "2.1", projection="PA")
    receive(db, store, "1.5", "2.2", projection="PA")
    receive(db, store, "1.2", "2.1", projection="LATERAL")
    receive(db, store, "1.3", "2.1", projection="PA")  # a third image of 2.1
    receive(db, store, "1.9", "2.3", projection="AP", priority=3)  # stat, sent last
    async with study_relay(db, store, eps(primary), max_images=2):
        await until_studies_done(db, ["2.1", "2.2", "2.3"])
    bodies = reports(primary)
    assert len(bodies) == 3  # one read per study, not per image
    first_text = bodies[0]["messages"][1]["content"][0]["text"]
    assert "Images: 1 of the study's 1, in order: 1. AP" in first_text  # stat first
    study_21 = next(b for b in bodies if "LATERAL" in b["messages"][1]["content"][0]["text"])
    text = study_21["messages"][1]["content"][0]["text"]
    assert "Images: 2 of the study's 3, in order: 1. PA; 2. LATERAL" in text
    assert [len(images_of(b)) for b in bodies].count(2) == 1
    assert sorted(len(images_of(b)) for b in bodies) == [1, 1, 2]
    # the read covers all three images of 2.1, the third included
    for uid in ("1.1", "1.2", "1.3"):
        row = await db.read(repo.get_exam, uid)
        assert row.exam.status == DONE and row.ai.uid == "2.1" and row.ai.version == 1


async def test_a_severe_study_is_notified_once_per_version(db, tmp_path, stubs):
    """The stub's severity (6) crosses the threshold (5): one notice for the study's read,
    not one per image; a requeue's new version is notified again."""
    primary, _ = stubs
    store = FilesystemStore(tmp_path)
    notified = []

    async def notify(exam, check):
        notified.append((exam.uid, check.severity))

    for uid, projection in (("1.1", "PA"), ("1.2", "LATERAL"), ("1.3", "PA")):
        receive(db, store, uid, "2.1", projection=projection, quiet=0.2)
    async with study_relay(db, store, eps(primary), notify=notify):
        await until_studies_done(db, ["2.1"])
        await until(lambda: notified)
        await asyncio.sleep(0.5)  # (a second notice would come now)
        assert notified == [("1.1", 6)]  # the study's first image stands for it
        assert await db.write(repo.requeue_study, "2.1")
        await until(lambda: len(notified) == 2, wait=10)
    assert notified == [("1.1", 6), ("1.1", 6)]
    assert (await db.read(repo.get_exam, "1.2")).ai.version == 2


async def test_more_images_than_the_server_allows_is_a_clear_error(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.max_images = 1  # a server started without --limit-mm-per-prompt
    store = FilesystemStore(tmp_path)
    receive(db, store, "1.1", "2.1", quiet=0)
    receive(db, store, "1.2", "2.1", projection="LATERAL", quiet=0)
    async with study_relay(db, store, eps(primary), max_images=2):
        for _ in range(200):
            study = await db.read(lambda s: s.get(Study, "2.1", populate_existing=True))
            if study.status == "error":
                break
            await asyncio.sleep(0.05)
    assert study.status == "error" and study.reason_code == "model_rejected"
    assert "At most 1 image(s)" in study.error


async def test_a_relay_that_dies_mid_read_loses_nothing_and_the_study_is_read_once(
        db, tmp_path, stubs):
    primary, _ = stubs
    store = FilesystemStore(tmp_path)
    receive(db, store, "1.1", "2.1", quiet=0)
    receive(db, store, "1.2", "2.1", projection="LATERAL", quiet=0)
    # a relay on this host held the study when its process died (a pid that is gone)
    dead = next(pid for pid in range(2 ** 22 + 7, 2 ** 23) if pid not in running_pids())
    db.write_sync(queue.heartbeat, "dead-worker", socket.gethostname(), dead)
    assert db.write_sync(queue.claim, "dead-worker", 600, table=queue.STUDIES).uid == "2.1"
    before = utcnow()
    async with study_relay(db, store, eps(primary)):
        await until_studies_done(db, ["2.1"])
    report = await db.read(lambda s: s.get(AIReport, "2.1"))
    assert report.version == 1 and report.created > before  # read once, by the live relay
    assert len(reports(primary)) == 1
    study = await db.read(lambda s: s.get(Study, "2.1", populate_existing=True))
    assert study.attempts == 1  # the crash counted as an attempt
    for uid in ("1.1", "1.2"):
        assert (await db.read(repo.get_exam, uid)).exam.status == DONE


async def test_a_cancelled_read_goes_back_and_is_read_once(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.delay = 1.0
    store = FilesystemStore(tmp_path)
    receive(db, store, "1.1", "2.1", quiet=0)
    async with study_relay(db, store, eps(primary)) as relay:
        for _ in range(100):
            if primary.state.in_flight:
                break
            await asyncio.sleep(0.02)
        relay.cancel()  # the role stops mid-read (shutdown)
        await asyncio.gather(relay, return_exceptions=True)
    study = await db.read(lambda s: s.get(Study, "2.1", populate_existing=True))
    assert study.status == QUEUED and study.lease_owner is None  # given back, not lost
    primary.state.delay = 0
    async with study_relay(db, store, eps(primary), worker="second"):
        await until_studies_done(db, ["2.1"])
    report = await db.read(lambda s: s.get(AIReport, "2.1"))
    assert report.version == 1


async def test_holds_of_the_other_mode_are_reclaimed_too(db, tmp_path, stubs):
    """A relay that read per image died holding an image; the relay now reading per study
    puts that image back (nothing stays held across a change of ``read_per``)."""
    primary, _ = stubs
    store = FilesystemStore(tmp_path)
    receive(db, store, "1.1", "2.1", quiet=60)  # the study waits: only the image is read
    dead = next(pid for pid in range(2 ** 22 + 7, 2 ** 23) if pid not in running_pids())
    db.write_sync(queue.heartbeat, "dead-worker", socket.gethostname(), dead)
    assert db.write_sync(queue.claim, "dead-worker", 600).uid == "1.1"  # per image
    async with study_relay(db, store, eps(primary)):
        for _ in range(100):
            exam = (await db.read(repo.get_exam, "1.1")).exam
            if exam.status != "processing":
                break
            await asyncio.sleep(0.05)
    assert exam.status == QUEUED and exam.lease_owner is None and exam.attempts == 1
