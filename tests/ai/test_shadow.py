"""The shadow model: a copy of live reads, rate-limited, never delaying the live read,
never shown as the AI read; agreement per shadow model."""

import asyncio
import contextlib
import time

import aiohttp

from support import records
from support.model_stub import Stub
from xrayvision import metrics
from xrayvision.ai.client import Endpoint, ModelClient
from xrayvision.ai.pipeline import Pipeline
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.relay import Relay
from xrayvision.ai.shadow import ShadowReader, TokenBucket
from xrayvision.ai.text import TextServices
from xrayvision.db import repo
from xrayvision.db.models import DONE, ShadowRead
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore

from .test_relay import add_exams, eps, until, until_counts

SHADOW_REPORT = ("FINDINGS:\nNo consolidation.\n\nIMPRESSION:\nShadow model says normal.")


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(rate=1.0, burst=2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] = 0.5
    assert not bucket.take()
    now[0] = 1.0
    assert bucket.take() and not bucket.take()
    now[0] = 100.0  # saved tokens never exceed the burst
    assert [bucket.take() for _ in range(3)] == [True, True, False]


@contextlib.asynccontextmanager
async def relay_with_shadow(db, store, primary, shadow, *, per_minute=6000.0, workers=2):
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(eps(primary), session, backoff=0.01, max_attempts=2)
        prompts = load_prompts(None)
        reader = None
        if shadow is not None:
            reader = ShadowReader(prompts, db,
                                  Endpoint("shadow", shadow.url, "medgemma-q4", timeout=30),
                                  per_minute=per_minute, workers=workers)
        pipeline = Pipeline(TextServices(client, prompts), db, store, bus,
                            shadow=reader.offer if reader else None)
        relay = Relay(pipeline, db, bus, "w", concurrency=4, lease_seconds=30,
                      sweep_interval=0.1, retry_delay=0.01)
        tasks = [asyncio.create_task(relay.run())]
        if reader is not None:
            tasks.append(asyncio.create_task(reader.run()))
        try:
            yield reader
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.close()


async def timed_reads(db, tmp_path, primary, shadow, prefix, count=12):
    store = FilesystemStore(tmp_path / prefix)
    async with relay_with_shadow(db, store, primary, shadow):
        started = time.perf_counter()
        add_exams(db, store, count, prefix=prefix)
        await until_counts(db, lambda c: c[DONE] >= count)
        return time.perf_counter() - started


async def test_a_slow_or_hung_shadow_never_delays_the_live_reads(db, tmp_path, stubs):
    """Measured: the live reads of 12 exams take as long with a shadow that answers in
    3 s, or never, as with no shadow at all."""
    primary, _ = stubs
    primary.state.delay = 0.05
    slow, hung = await Stub().start(), await Stub().start()
    slow.state.delay, hung.state.mode = 3.0, "hang"
    try:
        alone = await timed_reads(db, tmp_path, primary, None, "1.2.7")
        with_slow = await timed_reads(db, tmp_path, primary, slow, "1.2.8")
        with_hung = await timed_reads(db, tmp_path, primary, hung, "1.2.9")
    finally:
        await slow.stop()
        await hung.stop()
    # the shadow's 3 s would show as seconds; the margin is for a loaded machine
    assert with_slow < alone + 1.0 and with_hung < alone + 1.0, (alone, with_slow, with_hung)
    assert with_slow < 3.0


async def test_shadow_reads_are_stored_apart_and_never_shown_as_the_ai_read(db, tmp_path,
                                                                            stubs):
    primary, shadow = stubs
    shadow.state.report = SHADOW_REPORT
    shadow.state.check = {"positive": 0, "severity": 1, "confidence": 70, "summary": "normal"}
    store = FilesystemStore(tmp_path)
    # a worker for each of the relay's four reads in flight: no copy skipped as busy
    async with relay_with_shadow(db, store, primary, shadow, workers=4):
        uids = add_exams(db, store, 3, prefix="1.3.1")
        await until_counts(db, lambda c: c[DONE] == 3)

        async def stored():
            return await db.read(lambda s: s.query(ShadowRead).count())

        for _ in range(600):  # (the worker processes start with the first copy)
            if await stored() == 3:
                break
            await asyncio.sleep(0.05)
        assert await stored() == 3
    for uid in uids:
        exam = await db.read(repo.get_exam, uid)
        assert exam.ai.endpoint == "primary" and exam.ai.severity == 6
        assert "Shadow" not in exam.ai.text and exam.ai.version == 1
        (copy,) = await db.read(repo.shadow_reads_of, uid)
        assert (copy.model, copy.endpoint, copy.severity) == ("medgemma-q4", "shadow", 1)
        assert copy.text == SHADOW_REPORT
    # the shadow got the same request the live model got (images and all)
    live = [r for r in primary.state.requests if isinstance(r["messages"][1]["content"], list)]
    copied = [r for r in shadow.state.requests
              if isinstance(r["messages"][1]["content"], list)]
    assert sorted(str(r["messages"]) for r in live) == sorted(str(r["messages"])
                                                                for r in copied)
    assert {r["model"] for r in copied} == {"medgemma-q4"}


async def test_the_shadow_is_rate_limited(db, tmp_path, stubs):
    primary, shadow = stubs
    store = FilesystemStore(tmp_path)
    skipped = metrics.SHADOW_READS.labels("skipped_rate")._value.get()
    async with relay_with_shadow(db, store, primary, shadow, per_minute=6.0):
        add_exams(db, store, 8, prefix="1.3.2")
        await until_counts(db, lambda c: c[DONE] == 8)
        await until(lambda: metrics.SHADOW_READS.labels("skipped_rate")._value.get()
                    - skipped >= 7)

        def copies():
            return [r for r in shadow.state.requests
                    if isinstance(r["messages"][1]["content"], list)]

        await until(copies, wait=30.0)  # (the worker process starts with the first copy)
        await asyncio.sleep(0.5)
    # a burst of 8 reads: one copy (a 6-a-minute bucket holds one), the rest skipped
    assert len(copies()) == 1
    assert metrics.SHADOW_READS.labels("skipped_rate")._value.get() - skipped == 7


def test_agreement_per_shadow_model(db):
    """The shadow against the radiologists, against the live read, and the live read
    against the radiologists on the same units."""
    def seed(session):
        from xrayvision.db.repo import ExamInfo
        rows = [  # uid, live, radiologist, shadow model a, shadow model b
            ("9.1", 6, 7, 6, 2), ("9.2", 1, 0, 7, 1), ("9.3", 2, 8, 8, None),
            ("9.4", 7, None, 1, None)]
        for uid, live, rad, a, b in rows:
            records.add_exam(session, ExamInfo(uid=uid, region="chest", status=DONE))
            repo.save_ai_read(session, uid, text="x", severity=live,
                              positive=int(live >= 5), model="live", endpoint="primary",
                              prompt_version="p", threshold=5)
            if rad is not None:
                repo.save_rad_report(session, uid, severity=rad, positive=int(rad >= 5),
                                     summary="", text_en="", checked=True)
            for older in (0, a):  # the latest read of a unit counts
                repo.save_shadow_read(
                    session, uid, text="y", positive=-1, severity=older, confidence=-1,
                    summary="", model="a", endpoint="shadow", latency=1.0,
                    prompt_version="p")
            if b is not None:  # (as the relay stores them: in batches)
                repo.save_shadow_reads(session, [
                    {"uid": uid, "text": "y", "positive": -1, "severity": severity,
                     "confidence": -1, "summary": "", "model": "b", "endpoint": "shadow",
                     "latency": 1.0, "prompt_version": "p"} for severity in (9, b)])
    db.write_sync(seed)
    found = db.read_sync(repo.shadow_agreement, 5)
    assert set(found) == {"a", "b"}
    a, b = found["a"], found["b"]
    assert a["reads"] == 4 and b["reads"] == 2
    assert (a["radiologist"].tp, a["radiologist"].tn, a["radiologist"].fp,
            a["radiologist"].fn) == (2, 0, 1, 0)  # 9.1 TP, 9.2 FP, 9.3 TP
    assert (a["live"].tp, a["live"].tn, a["live"].fp, a["live"].fn) == (1, 0, 2, 1)
    assert (a["live_radiologist"].tp, a["live_radiologist"].tn,
            a["live_radiologist"].fn) == (1, 1, 1)  # the live model on the same units
    assert (b["radiologist"].tn, b["radiologist"].fn) == (1, 1)
