"""The relay and pipeline end to end: database, image store, stub model servers."""

import asyncio
import base64
import contextlib

import aiohttp

from support import records
from xrayvision import metrics
from xrayvision.ai.client import Endpoint, ModelClient
from xrayvision.ai.pipeline import ExamContext, Pipeline, report_messages
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.relay import Relay
from xrayvision.ai.text import TextServices
from xrayvision.db import queue, repo
from xrayvision.db.models import DONE, ERROR, QUEUED
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


def add_exams(db, store, count, prefix="1.2.3"):
    uids = [f"{prefix}.{i}" for i in range(count)]
    for uid in uids:
        store.put(uid, "png", PNG)
        db.write_sync(records.add_exam, ExamInfo(uid=uid, region="chest", projection="PA",
                                              status=QUEUED),
                      PatientInfo(cnp="1800101123456", sex="M"))
    return uids


@contextlib.asynccontextmanager
async def relay_on(db, store, endpoints, *, concurrency=4, notify=None, max_attempts=3):
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(endpoints, session, backoff=0.01, max_attempts=max_attempts)
        pipeline = Pipeline(TextServices(client, load_prompts(None)), db, store, bus,
                            notify=notify)
        relay = Relay(pipeline, db, bus, "test-worker", concurrency=concurrency,
                      lease_seconds=30, sweep_interval=0.2, max_attempts=max_attempts,
                      retry_delay=0.01)
        tasks = [asyncio.create_task(relay.run()),
                 asyncio.create_task(client.health_loop(0.2))]
        try:
            yield client, bus
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def until(predicate, wait=5.0):
    """Waits for what follows a commit (a notice is sent after the read is stored)."""
    for _ in range(int(wait / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)


async def until_counts(db, predicate, wait=30.0):
    for _ in range(int(wait / 0.05)):
        counts = await db.read(repo.queue_counts)
        if predicate(counts):
            return counts
        await asyncio.sleep(0.05)
    raise AssertionError(f"queue never got there: {counts}")


def eps(primary, secondary=None):
    found = [Endpoint("primary", primary.url, "medgemma", timeout=2)]
    if secondary:
        found.append(Endpoint("secondary", secondary.url, "medgemma", timeout=2))
    return found


def test_request_shape_is_chat_completions_with_a_png_data_uri():
    messages = report_messages(load_prompts(None), ExamContext("chest", "PA", "F", 61), PNG)
    assert messages[0]["role"] == "system" and "FINDINGS" in messages[0]["content"]
    user = messages[1]["content"]
    assert user[0]["type"] == "text" and "Region: chest" in user[0]["text"]
    assert "Patient age: 61 years" in user[0]["text"] and "female" in user[0]["text"]
    assert user[1]["image_url"]["url"] == "data:image/png;base64," + \
        base64.b64encode(PNG).decode()


async def test_happy_path(db, tmp_path, stubs):
    primary, secondary = stubs
    store = FilesystemStore(tmp_path)
    notified = []

    async def notify(exam, check):
        notified.append((exam.uid, check.severity))

    uid = add_exams(db, store, 1)[0]
    async with relay_on(db, store, eps(primary, secondary), notify=notify) as (_client, bus):
        events = bus.subscribe()
        await until_counts(db, lambda c: c[DONE] == 1)
        assert (await asyncio.wait_for(events.get(), 5)).type == "report.ready"
        await until(lambda: notified)
    row = await db.read(repo.get_exam, uid)
    assert row.ai.text.startswith("FINDINGS:\nRight lower lobe consolidation")
    assert (row.ai.positive, row.ai.severity, row.ai.confidence) == (1, 6, 85)
    assert row.ai.summary == "right lower lobe pneumonia" and row.ai.endpoint == "primary"
    assert notified == [(uid, 6)]  # 6 >= the default threshold 5
    body = primary.state.requests[0]
    assert body["model"] == "medgemma"
    assert body["messages"][1]["content"][1]["image_url"]["url"].startswith(
        "data:image/png;base64,")


async def test_requeued_exam_goes_through_the_review_prompt(db, tmp_path, stubs):
    primary, _ = stubs
    store = FilesystemStore(tmp_path)
    uid = add_exams(db, store, 1)[0]
    notified = []

    async def notify(exam, check):
        notified.append(exam.uid)

    async with relay_on(db, store, eps(primary), notify=notify):
        await until_counts(db, lambda c: c[DONE] == 1)
        assert await db.write(repo.review_ai_report, uid, correct=False, note="missed it",
                              username="dr.a") == 1
        await db.write(queue.requeue, uid)
        # Until the new read is stored, the current one (and its review) stays.
        row = await db.read(repo.get_exam, uid)
        assert row.ai.version == 1 and row.ai.review_note == "missed it"
        await until_counts(db, lambda c: c[DONE] == 1 and c["requeue"] == 0)
        await until(lambda: len(notified) == 2)
    texts = [r["messages"][1]["content"][0]["text"] for r in primary.state.requests
             if isinstance(r["messages"][1]["content"], list)]
    assert "Previous report:" not in texts[0]
    assert "Previous report:" in texts[1] and "Right lower lobe pneumonia" in texts[1]
    # The second read is version 2, not reviewed; the first is kept with its review.
    row = await db.read(repo.get_exam, uid)
    assert row.ai.version == 2 and not row.ai.reviewed and row.ai.review_correct == -1
    assert row.ai.prompt_version == load_prompts(None).version
    history = await db.read(repo.ai_history, uid)
    (first,) = history.versions
    assert (first.version, first.review_correct, first.review_note, first.reviewed_by) == \
        (1, 0, "missed it", "dr.a")
    assert first.text.startswith("FINDINGS:") and first.created <= first.superseded
    assert [(r.version, r.correct, r.username) for r in history.reviews] == \
        [(1, False, "dr.a")]
    assert notified == [uid, uid]  # severe both times: once per version


async def test_primary_down_at_start_secondary_serves(db, tmp_path, stubs):
    primary, secondary = stubs
    await primary.stop()
    store = FilesystemStore(tmp_path)
    add_exams(db, store, 3)
    async with relay_on(db, store, eps(primary, secondary)):
        await until_counts(db, lambda c: c[DONE] == 3)
    assert len(secondary.state.requests) == 6  # report + check for each


async def test_primary_dies_mid_run_then_comes_back(db, tmp_path, stubs):
    primary, secondary = stubs
    primary.state.delay = secondary.state.delay = 0.02
    store = FilesystemStore(tmp_path)
    add_exams(db, store, 50)
    before = metrics.MODEL_FAILOVERS.labels("primary")._value.get()
    async with relay_on(db, store, eps(primary, secondary)) as (client, _bus):
        await until_counts(db, lambda c: c[DONE] >= 10)
        await primary.stop()
        counts = await until_counts(db, lambda c: c[DONE] == 50)
        assert counts[ERROR] == 0
        assert metrics.MODEL_FAILOVERS.labels("primary")._value.get() > before
        assert len(secondary.state.requests) > 0
        # Primary back: the health check fails traffic back to it.
        await primary.start()
        await client.check_all()
        served = len(primary.state.requests)
        add_exams(db, store, 2, prefix="9.9")
        await until_counts(db, lambda c: c[DONE] == 52)
        assert len(primary.state.requests) == served + 4


async def test_both_down_exams_stay_queued_then_all_done(db, tmp_path, stubs):
    primary, secondary = stubs
    for stub in stubs:
        stub.state.mode = "500"
        stub.state.healthy = False
    store = FilesystemStore(tmp_path)
    add_exams(db, store, 5)
    async with relay_on(db, store, eps(primary, secondary)) as (client, _bus):
        await asyncio.sleep(1.0)
        counts = await db.read(repo.queue_counts)
        assert counts[QUEUED] == 5 and counts[ERROR] == 0 and counts[DONE] == 0
        assert client.active() is None
        exam = (await db.read(repo.get_exam, "1.2.3.0")).exam
        assert exam.attempts == 0  # never counted against the exam
        secondary.state.mode, secondary.state.healthy = "ok", True
        await client.check_all()  # the health loop's job; the relay wakes at once
        await until_counts(db, lambda c: c[DONE] == 5)


async def test_check_without_json_stores_minus_one(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.mode = "chk_nojson"
    store = FilesystemStore(tmp_path)
    uid = add_exams(db, store, 1)[0]
    async with relay_on(db, store, eps(primary)):
        await until_counts(db, lambda c: c[DONE] == 1)
    ai = (await db.read(repo.get_exam, uid)).ai
    assert (ai.positive, ai.severity, ai.confidence, ai.summary) == (-1, -1, -1, "")
    assert ai.text.startswith("FINDINGS:")


async def test_malformed_answers_end_in_error_after_max_attempts(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.mode = "malformed"
    store = FilesystemStore(tmp_path)
    uid = add_exams(db, store, 1)[0]
    async with relay_on(db, store, eps(primary), max_attempts=2):
        await until_counts(db, lambda c: c[ERROR] == 1)
    exam = (await db.read(repo.get_exam, uid)).exam
    assert exam.attempts == 2 and "ModelBadOutput" in exam.error
    assert exam.reason_code == "model_bad_output"


async def test_missing_png_fails_the_exam_with_the_reason(db, tmp_path, stubs):
    primary, _ = stubs
    store = FilesystemStore(tmp_path)
    uid = add_exams(db, store, 1)[0]
    store.delete(uid, "png")
    async with relay_on(db, store, eps(primary), max_attempts=1):
        await until_counts(db, lambda c: c[ERROR] == 1)
    exam = (await db.read(repo.get_exam, uid)).exam
    assert "no PNG stored" in exam.error and exam.reason_code == "image_missing"


async def test_a_rejected_request_ends_in_error_with_its_reason(db, tmp_path, stubs):
    primary, _ = stubs
    store = FilesystemStore(tmp_path)
    uid = add_exams(db, store, 1)[0]
    primary.state.mode = "400"
    async with relay_on(db, store, eps(primary), max_attempts=1):
        await until_counts(db, lambda c: c[ERROR] == 1)
    exam = (await db.read(repo.get_exam, uid)).exam
    assert exam.reason_code == "model_rejected"
    assert "HTTP 400" in exam.error and "At most 1 image" in exam.error


async def test_concurrency_is_bounded(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.delay = 0.2
    store = FilesystemStore(tmp_path)
    add_exams(db, store, 12)
    async with relay_on(db, store, eps(primary), concurrency=3):
        await until_counts(db, lambda c: c[DONE] == 12)
    assert primary.state.peak == 3


async def test_long_calls_renew_the_lease(db, tmp_path, stubs):
    primary, _ = stubs
    primary.state.delay = 1.0  # each call outlives the 0.6 s lease
    store = FilesystemStore(tmp_path)
    uid = add_exams(db, store, 1)[0]
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(eps(primary), session)
        relay = Relay(Pipeline(TextServices(client, load_prompts(None)), db, store, bus),
                      db, bus, "w",
                      lease_seconds=0.6, sweep_interval=0.1)  # the sweep reclaims expired
        task = asyncio.create_task(relay.run())
        try:
            await until_counts(db, lambda c: c[DONE] == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    exam = (await db.read(repo.get_exam, uid)).exam
    assert exam.attempts == 0, "never reclaimed while its worker was busy with it"
    assert len([r for r in primary.state.requests
                if isinstance(r["messages"][1]["content"], list)]) == 1


async def test_queue_metrics_export(db):
    from xrayvision.ai.relay import export_queue_metrics

    db.write_sync(records.add_exam, ExamInfo(uid="5.1", status=QUEUED))
    task = asyncio.create_task(export_queue_metrics(db, interval=0.05))
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert metrics.QUEUE_DEPTH.labels(QUEUED)._value.get() == 1
    assert metrics.QUEUE_OLDEST_SECONDS._value.get() >= 0


def test_notice_has_no_patient_name_unless_allowed(tmp_path):
    import dataclasses
    import datetime as dt

    from xrayvision.ai.parse import Check
    from xrayvision.config import load_settings
    from xrayvision.db.repo import ReportContext
    from xrayvision.runtime import notice_for

    exam = ReportContext("1.2", "chest", "PA", dt.datetime.now(dt.UTC), None, "180",
                         "Popescu Ion", "M", None, "")
    settings = load_settings(tmp_path, env={"XRAYVISION_NOTIFY_DASHBOARD_URL": "https://xr.h"})
    notice = notice_for(settings, exam, Check(1, 9, 90, "pneumothorax"))
    assert notice.patient_name == "" and "Popescu" not in notice.body()
    assert notice.link == "https://xr.h/#/exam/1.2" and notice.severity == 9
    allowed = dataclasses.replace(settings, notify=dataclasses.replace(
        settings.notify, include_patient_name=True))
    assert "Popescu Ion" in notice_for(allowed, exam, Check(1, 9, 90, "x")).body()
