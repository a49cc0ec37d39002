"""Known-answer probes: the probe set, the judging, and endpoints judged by their answers
(stub model servers in the modes a broken model server shows)."""

import asyncio
import contextlib
import json

import aiohttp
import pytest

from support.model_stub import Stub
from xrayvision import metrics
from xrayvision.ai.client import ModelClient, ModelUnavailable
from xrayvision.ai.parse import Check, Report
from xrayvision.ai.pipeline import ExamContext, Pipeline
from xrayvision.ai.probes import (
    ProbeCase,
    Prober,
    ProbeRunner,
    ProbeSetError,
    follow_probes,
    judge,
    load_probe_set,
    stored_verdicts,
)
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.relay import Relay
from xrayvision.ai.text import TextServices
from xrayvision.db import repo
from xrayvision.db.models import DONE
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore

from .test_relay import add_exams, eps, until_counts

CASE = ProbeCase("normal", (b"\x89PNG",), ExamContext("chest", "PA", "F", 40), ("PA",),
                 severity=(0, 3), positive=0)


def test_the_shipped_probe_set_loads():
    probes = load_probe_set(None)
    assert [c.name for c in probes.cases] == ["normal chest", "massive right pleural effusion"]
    assert probes.cases[0].severity == (0, 3) and probes.cases[1].severity == (5, 10)
    assert all(len(c.images) == 1 and c.context.region == "chest" for c in probes.cases)
    assert len(probes.version) == 12


def test_judging_an_answer():
    report = Report("Clear lungs.", "Normal chest.")
    assert judge(CASE, report, Check(0, 1, 90), 3.0, 60) == []
    assert judge(CASE, report, Check(1, 9, 90), 3.0, 60) == [
        "severity 9, expected 0-3", "positive 1, expected 0"]
    assert judge(CASE, Report("Clear lungs.", ""), Check(0, 0, 90), 3.0, 60) == [
        "no IMPRESSION section"]
    assert judge(CASE, report, Check(), 3.0, 60) == [
        "CHK answer without a usable severity", "positive -1, expected 0"]
    assert judge(CASE, report, Check(0, 0, 90), 75.0, 60) == ["took 75.0 s, budget 60 s"]


@pytest.mark.parametrize(("manifest", "files", "message"), [
    (None, {}, "cannot be read"),
    ("[[case]\nname=", {}, "not valid TOML"),
    ("title = 'x'", {}, "has no [[case]]"),
    ("[[case]]\nname='a'\nimages=['a.png']\nseverity=[0,3]", {}, "image a.png cannot be read"),
    ("[[case]]\nname='a'\nimages=['a.png']\nseverity=[0,3]", {"a.png": b"GIF89a"},
     "is not a PNG"),
    ("[[case]]\nname='a'\nimages=['a.png']\nseverity=[5,3]", {"a.png": b"\x89PNG"},
     "severity must be [low, high] within 0..10"),
    ("[[case]]\nname='a'\nimages=['a.png']\nseverity=[0,3]\npositive=2",
     {"a.png": b"\x89PNG"}, "positive must be 0 or 1"),
    ("[[case]]\nname='a'\nimages=['a.png']\nseverity=[0,3]\nsections=['history']",
     {"a.png": b"\x89PNG"}, "unknown sections history"),
])
def test_a_broken_probe_set_is_a_clear_error(tmp_path, manifest, files, message):
    if manifest is not None:
        (tmp_path / "probes.toml").write_text(manifest)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ProbeSetError, match=message.replace("[", r"\[")):
        load_probe_set(tmp_path)


@contextlib.asynccontextmanager
async def probing(db, stubs, *, budget=20.0, retry=0.2):
    """A client on the two stubs, its health loop, and a prober (probe set shipped)."""
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(eps(*stubs), session, backoff=0.01, max_attempts=1)
        runner = ProbeRunner(client, load_prompts(None), load_probe_set(None), budget=budget)
        prober = Prober(runner, db, bus, interval=600, retry_interval=retry)
        tasks = [asyncio.create_task(client.health_loop(0.2)),
                 asyncio.create_task(prober.run(tick=0.05))]
        try:
            yield client, prober, bus
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await bus.close()


async def verdict_of(client, name, state, wait=10.0):
    for _ in range(int(wait / 0.05)):
        health = client.health()[name]
        if health.probe == state:
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never became {state}: {client.health()[name]}")


async def test_a_correct_model_passes_and_the_verdicts_are_kept(db, stubs):
    async with probing(db, stubs) as (client, _prober, _bus):
        await verdict_of(client, "primary", "passing")
        await verdict_of(client, "secondary", "passing")
        assert client.active().name == "primary"
    stored = {v["endpoint"]: v for v in await db.read(stored_verdicts)}
    assert stored["primary"]["passed"] is True
    assert [c["severity"] for c in stored["primary"]["cases"]] == [0, 8]
    # the probes went to each endpoint, as reads with the images, then CHK
    primary = stubs[0].state
    assert len(primary.probe_requests) == 4 and not primary.requests
    assert primary.probe_requests[0]["messages"][1]["content"][1]["type"] == "image_url"
    assert metrics.MODEL_PROBE_PASSING.labels("primary")._value.get() == 1


@pytest.mark.parametrize(("mode", "delay", "reason"), [
    ("wrong", 0, "normal chest: severity 9, expected 0-3, positive 1, expected 0"),
    ("prose", 0, "no IMPRESSION section"),
    ("chk_nojson", 0, "CHK answer without a usable severity"),
    ("malformed", 0, "ModelBadOutput"),
    ("ok", 1.5, "no answer within the budget of 1 s"),
])
async def test_a_wrong_model_is_degraded_and_traffic_moves(db, stubs, mode, delay, reason):
    """Alive but wrong (valid JSON, wrong severity), the wrong format, broken JSON, slow:
    the endpoint is degraded, requests go to the other one as if it were down, and it
    comes back once it answers right."""
    primary, secondary = stubs
    primary.state.mode, primary.state.delay = mode, delay
    async with probing(db, stubs, budget=1.0 if delay else 20.0) as (client, _prober, _bus):
        health = await verdict_of(client, "primary", "failing")
        assert reason in health.probe_reason
        assert health.healthy  # alive: its liveness is not the problem
        await verdict_of(client, "secondary", "passing")
        assert client.active().name == "secondary"
        answer = await client.chat([{"role": "user", "content": "hello"}], call="report")
        assert answer.endpoint == "secondary"
        assert metrics.MODEL_DEGRADED.labels("primary")._value.get() == 1
        primary.state.mode, primary.state.delay = "ok", 0  # fixed
        await verdict_of(client, "primary", "passing")
        assert client.active().name == "primary"
        assert metrics.MODEL_DEGRADED.labels("primary")._value.get() == 0


async def test_every_endpoint_degraded_means_no_reads(db, stubs):
    for stub in stubs:
        stub.state.mode = "wrong"
    async with probing(db, stubs) as (client, _prober, _bus):
        await verdict_of(client, "primary", "failing")
        await verdict_of(client, "secondary", "failing")
        assert client.active() is None and not client.recovered.is_set()
        with pytest.raises(ModelUnavailable, match="known-answer probes"):
            await client.chat([{"role": "user", "content": "hello"}], call="report")


async def test_an_unreachable_endpoint_is_not_judged(db, stubs):
    """A probe round that reaches nothing is the health check's business: no verdict."""
    primary, _ = stubs
    primary.state.mode = "500"
    async with probing(db, stubs) as (client, prober, _bus):
        verdict = await prober.probe_endpoint(client.endpoints[0])
        assert verdict.passed is None and "HTTP 500" in verdict.reason
        await prober.record(verdict)
        assert client.health()["primary"].probe == ""


async def test_other_processes_follow_the_verdicts(db, stubs):
    """The prober runs in one relay; every other process's client routes alike, from the
    stored verdict at its start and from each published one."""
    primary, _ = stubs
    primary.state.mode = "wrong"
    async with probing(db, stubs) as (client, _prober, bus), \
            aiohttp.ClientSession() as session:
        await verdict_of(client, "primary", "failing")
        late = ModelClient(eps(*stubs), session)  # a process started after the verdict
        following = asyncio.create_task(follow_probes(late, db, bus))
        try:
            await verdict_of(late, "primary", "failing")
            assert late.active().name == "secondary"
            primary.state.mode = "ok"
            await verdict_of(late, "primary", "passing")
            assert late.active().name == "primary"
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)


async def test_a_verdict_reached_on_another_url_is_not_applied(db, stubs):
    """A rolling update: a verdict about the old URL says nothing about the new one."""
    primary, secondary = stubs
    other = await Stub().start()
    try:
        primary.state.mode = "wrong"
        async with probing(db, stubs) as (client, _prober, bus), \
                aiohttp.ClientSession() as session:
            await verdict_of(client, "primary", "failing")
            moved = ModelClient(eps(other, secondary), session)
            following = asyncio.create_task(follow_probes(moved, db, bus))
            await asyncio.sleep(0.3)
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            assert moved.health()["primary"].probe == ""
            assert moved.active().name == "primary"
    finally:
        await other.stop()


async def test_no_exam_is_read_by_an_endpoint_after_it_failed_its_probes(db, tmp_path, stubs):
    """The relay, its prober and a stream of exams: the primary turns wrong while exams
    are being read; once its verdict is in, every read is the secondary's."""
    primary, secondary = stubs
    store = FilesystemStore(tmp_path)
    async with probing(db, stubs) as (client, prober, bus):
        pipeline = Pipeline(TextServices(client, load_prompts(None)), db, store, bus)
        relay = Relay(pipeline, db, bus, "w", concurrency=2, lease_seconds=30,
                      sweep_interval=0.1, retry_delay=0.01)
        running = asyncio.create_task(relay.run())
        try:
            await verdict_of(client, "primary", "passing")
            add_exams(db, store, 5, prefix="1.2.5")
            await until_counts(db, lambda c: c[DONE] == 5)
            primary.state.mode = "wrong"
            prober.probe_soon()
            failed = await verdict_of(client, "primary", "failing")
            add_exams(db, store, 20, prefix="1.2.6")
            await until_counts(db, lambda c: c[DONE] == 25)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    before = [await db.read(repo.get_exam, f"1.2.5.{i}") for i in range(5)]
    after = [await db.read(repo.get_exam, f"1.2.6.{i}") for i in range(20)]
    assert {e.ai.endpoint for e in before} == {"primary"}
    assert {e.ai.endpoint for e in after} == {"secondary"}, failed


async def test_probes_are_read_as_real_reads(db, stubs, tmp_path):
    """A probe is asked like a study read: the same system prompt, the context and the
    views line, the image scaled to the model's input size."""
    big = tmp_path / "set"
    big.mkdir()
    import cv2
    import numpy as np
    cv2.imwrite(str(big / "big.png"), np.full((1400, 1000), 128, np.uint8))
    (big / "probes.toml").write_text(
        "[[case]]\nname='big'\nimages=['big.png']\nregion='chest'\nprojection='PA'\n"
        "severity=[0,10]\n")
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(eps(stubs[0]), session)
        from xrayvision.images import fit_png, png_size
        prober = ProbeRunner(client, load_prompts(None), load_probe_set(big), budget=20,
                             scale=lambda png: fit_png(png, 896))
        verdict = await prober.probe_endpoint(client.endpoints[0])
    await bus.close()
    assert verdict.passed is True
    body = stubs[0].state.requests[0]
    prompts = load_prompts(None)
    assert body["messages"][0]["content"] == prompts.rep
    text = body["messages"][1]["content"][0]["text"]
    assert "Region: chest" in text and "Images: 1 of the study's 1, in order: 1. PA" in text
    import base64
    png = base64.b64decode(body["messages"][1]["content"][1]["image_url"]["url"].split(",")[1])
    assert png_size(png) == (640, 896)


async def test_verdict_json_round_trip(db, stubs):
    async with probing(db, stubs) as (client, _prober, _bus):
        await verdict_of(client, "primary", "passing")
    row = await db.read(repo.get_state, "model-probe:primary")
    data = json.loads(row)
    assert set(data) == {"endpoint", "url", "model", "passed", "reason", "at", "probe_set",
                         "cases"}
    assert data["url"] == stubs[0].url and data["model"] == "medgemma"


async def test_the_shadow_is_probed_but_routes_nothing(db, stubs):
    """A shadow model's probe verdict is kept (news for whoever would promote it); it
    is not an endpoint of the client, so nothing is routed by it."""
    from xrayvision.ai.client import Endpoint

    primary, secondary = stubs
    secondary.state.mode = "wrong"  # here: the shadow's server
    bus = LocalBus()
    await bus.start()
    async with aiohttp.ClientSession() as session:
        client = ModelClient(eps(primary), session, max_attempts=1)
        runner = ProbeRunner(client, load_prompts(None), load_probe_set(None), budget=20)
        prober = Prober(runner, db, bus, interval=600, retry_interval=600,
                        shadow=Endpoint("shadow", secondary.url, "mg-q4", timeout=5))
        task = asyncio.create_task(prober.run(tick=0.05))
        try:
            for _ in range(200):
                stored = {v["endpoint"]: v for v in await db.read(stored_verdicts)}
                if {"primary", "shadow"} <= set(stored):
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await bus.close()
    assert stored["shadow"]["passed"] is False and stored["shadow"]["model"] == "mg-q4"
    assert stored["primary"]["passed"] is True
    assert set(client.health()) == {"primary"} and client.active().name == "primary"
