"""The API read per study: the study list (urgent first), an image's page showing its
study's read and history, a review and a requeue of an image acting on its study."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from support import records
from web.conftest import basic, web_services, web_settings
from xrayvision.db import queue, repo
from xrayvision.db.models import IGNORE, QUEUED, AIReport, Study
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.web.app import init_app
from xrayvision.web.health import Readiness


@pytest.fixture
async def api(aiohttp_client, tmp_path, db):
    bus = LocalBus()
    await bus.start()
    store = FilesystemStore(tmp_path / "images")
    app = init_app(web_settings(tmp_path, read_per="study"), Readiness())
    async with web_services(app, db, store, bus) as services:
        yield await aiohttp_client(app), services


def receive(db, uid, study, *, projection="PA", priority=0, status=QUEUED, region="chest"):
    def write(session):
        records.add_exam(session, ExamInfo(uid=uid, study_uid=study, region=region,
                                           projection=projection, priority=priority,
                                           accession="A" + study),
                         PatientInfo(cnp="1800101123456", name="Popescu^Ion"))
        repo.finish_conversion(session, uid, status, "no rule" if status == IGNORE else "",
                               "no_region_rule" if status == IGNORE else "")
        repo.refresh_study(session, study, uid, became_readable=status == QUEUED,
                           read_per_study=True, quiet=0, threshold=5)
    db.write_sync(write)


def read(db, key, severity, model="medgemma"):
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == key

    def write(session):
        context = repo.study_context(session, key)
        repo.save_study_read(session, key, [i.uid for i in context.images], threshold=5,
                             text=f"read {severity}", severity=severity, positive=1,
                             model=model)
        queue.complete(session, key, "w", table=queue.STUDIES)
    db.write_sync(write)


async def test_the_study_list_and_an_images_page(api):
    client, services = api
    db = services.db
    receive(db, "1.1", "2.1")
    receive(db, "1.2", "2.1", projection="LATERAL")
    receive(db, "1.3", "2.2")
    receive(db, "1.4", "2.3", status=IGNORE, region="")
    read(db, "2.1", 8)
    read(db, "2.2", 2)
    h = basic("viewer")
    page = await (await client.get("/api/studies", headers=h)).json()
    # critical first, then by severity (the ignored study has none)
    assert [s["uid"] for s in page["studies"]] == ["2.1", "2.2", "2.3"]
    first = page["studies"][0]
    assert (first["images"], first["views"], first["regions"]) == (2, ["PA", "LATERAL"],
                                                                  ["chest"])
    assert first["ai"]["severity"] == 8 and first["critical_unreviewed"] is True
    assert first["patient"]["cnp"] == "1800101123456"
    ignored = page["studies"][2]
    assert (ignored["status"], ignored["reason_code"]) == ("ignore", "no_region_rule")
    critical = await (await client.get("/api/studies?critical=true", headers=h)).json()
    assert [s["uid"] for s in critical["studies"]] == ["2.1"] and critical["total"] == 1
    by_accession = await (await client.get("/api/studies?accession=A2.2", headers=h)).json()
    assert [s["uid"] for s in by_accession["studies"]] == ["2.2"]
    long = await client.get("/api/studies?accession=" + "9" * 65, headers=h)
    assert long.status == 400
    assert (await client.get("/api/studies?sort=nope", headers=h)).status == 400
    assert (await client.get("/api/studies?agreement=TP", headers=h)).status == 200  # ignored
    # an image's page shows its study's read
    detail = await (await client.get("/api/exams/1.2", headers=h)).json()
    assert detail["ai"]["text"] == "read 8" and detail["ai"]["version"] == 1
    assert [i["uid"] for i in detail["study_images"]] == ["1.1", "1.2"]


async def test_review_and_requeue_of_an_image_act_on_its_study(api):
    client, services = api
    db = services.db
    receive(db, "1.1", "2.1")
    receive(db, "1.2", "2.1", projection="LATERAL")
    read(db, "2.1", 8)
    h = basic("rad")
    resp = await client.post("/api/rad_review", json={"uid": "1.2", "correct": False,
                                                      "note": "missed"}, headers=h)
    assert resp.status == 200 and (await resp.json())["version"] == 1
    page = await (await client.get("/api/studies", headers=h)).json()
    assert page["studies"][0]["critical_unreviewed"] is False
    resp = await client.post("/api/requeue", json={"uid": "1.1"}, headers=h)
    assert resp.status == 200
    assert db.read_sync(repo.get_study, "2.1").status == "requeue"
    read(db, "2.1", 3)
    detail = await (await client.get("/api/exams/1.1", headers=h)).json()
    assert detail["ai"]["version"] == 2 and detail["ai"]["severity"] == 3
    assert [(v["version"], v["review_correct"]) for v in detail["history"]["versions"]] == [
        (1, 0)]
    assert [r["note"] for r in detail["history"]["reviews"]] == ["missed"]


async def test_requeue_of_an_ignored_study_needs_a_region(api):
    client, services = api
    receive(services.db, "1.4", "2.3", status=IGNORE, region="")
    h = basic("rad")
    resp = await client.post("/api/requeue", json={"uid": "1.4"}, headers=h)
    assert resp.status == 409 and "name the region" in await resp.text()
    resp = await client.post("/api/requeue", json={"uid": "1.4", "region": "chest"},
                             headers=h)
    assert resp.status == 200
    context = services.db.read_sync(repo.study_context, "2.3")
    assert [(i.uid, i.region) for i in context.images] == [("1.4", "chest")]
    assert (await client.post("/api/requeue", json={"uid": "9.9"}, headers=h)).status == 404


async def test_time_to_the_first_read_agreement_per_model_and_study_counts(api):
    """Receipt to the first AI read per day (a requeue's later read does not count),
    agreement per model, and the queue counted in studies."""
    client, services = api
    db = services.db
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    received = now - dt.timedelta(hours=2)
    for n, (study, delay, model) in enumerate((("2.1", 60, "medgemma"), ("2.2", 300, "medgemma"),
                                               ("2.3", 30, "other"), ("2.4", 600, "other"))):
        receive(db, f"1.{n}", study)
        read(db, study, 8 if n % 2 == 0 else 2, model=model)
        db.write_sync(lambda s, study=study, delay=delay: (
            s.execute(update(Study).where(Study.uid == study).values(created=received)),
            s.execute(update(AIReport).where(AIReport.uid == study).values(
                created=received + dt.timedelta(seconds=delay)))))
        db.write_sync(repo.save_rad_report, study, text="t", severity=8, radiologist="Dr. A",
                      checked=True)
    receive(db, "1.9", "2.9")  # waiting
    h = basic("rad")
    assert (await client.post("/api/requeue", json={"uid": "1.0"}, headers=h)).status == 200
    read(db, "2.1", 8)  # read again now: two hours after receipt, not the first read
    turnaround = await (await client.get("/api/stats/turnaround", headers=h)).json()
    assert turnaround["unit"] == "study"
    # nearest rank: of 30, 60, 300, 600 s the median is 60, the 90th percentile 600
    assert turnaround["days"] == [{"day": received.date().isoformat(), "reads": 4,
                                   "p50_seconds": 60.0, "p90_seconds": 600.0}]
    later = (now + dt.timedelta(days=1)).date().isoformat()
    empty = await (await client.get(f"/api/stats/turnaround?since={later}T00:00:00Z",
                                    headers=h)).json()
    assert empty["days"] == []
    assert (await client.get("/api/stats/turnaround?since=x", headers=h)).status == 400
    models = await (await client.get("/api/stats/models", headers=h)).json()
    by_model = {m["model"]: (m["reads"], m["agreement"]["tp"], m["agreement"]["fn"])
                for m in models["models"]}
    # medgemma read 2.1 (8: agrees) and 2.2 (2: missed); other read 2.3 (8) and 2.4 (2)
    assert by_model == {"medgemma": (2, 1, 1), "other": (2, 1, 1)}
    g = await (await client.get("/api/stats/global", headers=h)).json()
    assert g["study_statuses"]["done"] == 4 and g["study_statuses"]["queued"] == 1
    assert g["statuses"]["done"] == 4


async def test_config_and_the_live_header_say_how_the_his_answers(aiohttp_client, tmp_path, db):
    """With a FHIR server configured, /api/config and the dashboard's state carry the
    poller's last finding (here: the self-check's warning)."""
    import dataclasses

    from xrayvision.fhir.health import HEALTH_KEY, FhirHealth
    from xrayvision.roles.web import dashboard_state

    settings = web_settings(tmp_path, read_per="study")
    settings = dataclasses.replace(settings, fhir=dataclasses.replace(
        settings.fhir, url="http://his.example/fhir"))
    warning = "the FHIR server refused our credentials (HTTP 401)"
    db.write_sync(repo.set_state, HEALTH_KEY, FhirHealth(warning=warning).to_json())
    bus = LocalBus()
    await bus.start()
    app = init_app(settings, Readiness())
    async with web_services(app, db, FilesystemStore(tmp_path / "images"), bus):
        client = await aiohttp_client(app)
        config = await (await client.get("/api/config", headers=basic("viewer"))).json()
    assert config["fhir"]["ok"] is False and config["fhir"]["warning"] == warning
    state = await dashboard_state(db, studies=True, fhir=True)
    assert state["fhir"]["warning"] == warning and state["unit"] == "study"
    assert "fhir" not in await dashboard_state(db)
