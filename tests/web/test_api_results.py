"""The results outbox in the API: a review sends the read again (a new SR version), the
admins see what waits and what was given up, and send a dead one again."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from support import records
from web.conftest import USERS, basic, web_services
from xrayvision.config import DicomPeer, load_settings
from xrayvision.db import repo
from xrayvision.db.models import AuditLog
from xrayvision.db.repo import ExamInfo
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.web.app import init_app
from xrayvision.web.health import Readiness


@pytest.fixture
async def api(aiohttp_client, tmp_path, db):
    settings = load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": "web",
                                            "XRAYVISION_AI_READ_PER": "image",
                                            "XRAYVISION_RESULTS_FHIR_URL": "http://his.test/fhir"})
    settings = dataclasses.replace(
        settings, users=USERS, results=dataclasses.replace(
            settings.results, dicom_destination=DicomPeer("PACS", "pacs.test", 104)))
    bus = LocalBus()
    await bus.start()
    app = init_app(settings, Readiness())
    async with web_services(app, db, FilesystemStore(tmp_path / "images"), bus) as services:
        yield await aiohttp_client(app), services


def read(db, uid: str) -> None:
    db.write_sync(records.add_exam, ExamInfo(uid=uid, region="chest", status="processing"))
    db.write_sync(repo.save_ai_read, uid, threshold=5, results=("dicom", "fhir"),
                  text="IMPRESSION:\nnormal", severity=1)


async def test_a_review_is_sent_and_the_admins_see_the_outbox(api):
    client, services = api
    read(services.db, "2.1")
    resp = await client.post("/api/rad_review", headers=basic("rad"),
                             json={"uid": "2.1", "correct": True, "note": ""})
    assert resp.status == 200
    resp = await client.get("/api/admin/results", headers=basic("admin"))
    assert resp.status == 200
    body = await resp.json()
    assert body["destinations"] == [
        {"destination": "dicom", "pending": 2, "dead": 0,
         "oldest_pending": body["destinations"][0]["oldest_pending"]},
        {"destination": "fhir", "pending": 2, "dead": 0,
         "oldest_pending": body["destinations"][1]["oldest_pending"]}]
    reviewed = [r for r in body["results"] if r["review"]]
    assert {r["destination"] for r in reviewed} == {"dicom", "fhir"}
    assert all(r["status"] == "pending" and r["next_attempt"] for r in body["results"])
    resp = await client.get("/api/admin/results?status=dead", headers=basic("admin"))
    assert (await resp.json())["results"] == []
    resp = await client.get("/api/admin/results?status=lost", headers=basic("admin"))
    assert resp.status == 400


async def test_resend_a_dead_result(api):
    client, services = api
    read(services.db, "2.2")
    [row, _] = services.db.write_sync(repo.claim_results, "w", limit=2, lease_seconds=60)
    services.db.write_sync(repo.result_failed, row.id, "w", "PACS refused it", attempts=1,
                           max_attempts=1, base_delay=1)
    body = await (await client.get("/api/admin/results?status=dead",
                                   headers=basic("admin"))).json()
    assert [(r["id"], r["error"]) for r in body["results"]] == [(row.id, "PACS refused it")]
    assert (await client.post(f"/api/admin/results/{row.id}/resend",
                              headers=basic("rad"))).status == 403
    resp = await client.post(f"/api/admin/results/{row.id}/resend", headers=basic("admin"))
    assert resp.status == 200 and (await resp.json()) == {"id": row.id, "status": "pending"}
    resp = await client.post(f"/api/admin/results/{row.id}/resend", headers=basic("admin"))
    assert resp.status == 409  # pending now
    assert (await client.post("/api/admin/results/x/resend",
                              headers=basic("admin"))).status == 400
    audits = services.db.read_sync(lambda s: s.scalars(
        select(AuditLog.action).where(AuditLog.target == str(row.id))).all())
    assert audits == ["result.resend"]
