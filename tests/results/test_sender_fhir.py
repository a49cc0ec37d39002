"""The AI read to a real FHIR server (sekmet-fhir) from the outbox: an Observation and a
preliminary DiagnosticReport, valid R4 (fhir.resources R4B), created once even when the
first try timed out after the server had stored them; our poller never takes them for a
radiologist's report."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from support.fhirpeer import PASSWORD, USER, Sekmet, patient, validated
from xrayvision.config import load_settings
from xrayvision.db.models import DEAD, PENDING, SENT, ResultOutbox
from xrayvision.fhir.client import FhirClient
from xrayvision.fhir.resources import AI_READ_SYSTEM, is_ours
from xrayvision.results.sender import ResultSender

from .conftest import record_read

CNP = "9RG1"  # the Patient ID of pydicom-data's RG1


@pytest.fixture
def sekmet(tmp_path):
    server = Sekmet(tmp_path / "sekmet").start()
    server.put(patient("p-rg1", CNP, "CompressedSamples", "RG1", "1960-01-01", "male"))
    yield server
    server.stop()


def outbox(db) -> list[ResultOutbox]:
    return db.read_sync(lambda s: list(s.scalars(select(ResultOutbox).order_by(ResultOutbox.id))))


def make_sender(db, tmp_path, url: str, http: aiohttp.ClientSession, **extra) -> ResultSender:
    settings = load_settings(tmp_path / "cfg", env={
        "XRAYVISION_RESULTS_FHIR_URL": url, "XRAYVISION_RESULTS_FHIR_USERNAME": USER,
        "XRAYVISION_RESULTS_FHIR_PASSWORD": PASSWORD, "XRAYVISION_RESULTS_RETRY_DELAY": "0.1",
        "XRAYVISION_RESULTS_TIMEOUT": "2",
        **{f"XRAYVISION_RESULTS_{k.upper()}": str(v) for k, v in extra.items()}})
    return ResultSender(settings, db, "test-worker",
                        fhir=FhirClient(ResultSender.fhir_server(settings), http))


def search(server: Sekmet, kind: str, key: str) -> list[dict]:
    bundle = server.request("GET", f"{kind}?identifier={AI_READ_SYSTEM}|{key}")
    return [e["resource"] for e in bundle.get("entry", [])]


async def test_observation_and_report_stored_and_valid(db, tmp_path, sekmet):
    key = record_read(db, ("fhir",))
    async with aiohttp.ClientSession() as http:
        sender = make_sender(db, tmp_path, sekmet.url, http)
        assert await sender.send_due() == 1
    assert outbox(db)[0].status == SENT
    [obs] = search(sekmet, "Observation", key)
    [report] = search(sekmet, "DiagnosticReport", key)
    validated(obs), validated(report)
    assert obs["status"] == "preliminary" and obs["valueInteger"] == 7
    assert obs["interpretation"][0]["coding"][0]["code"] == "A"
    assert obs["subject"] == {"reference": "Patient/p-rg1"}  # the HIS's patient, found
    assert obs["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{key}"
    assert "medgemma" in obs["device"]["display"]
    assert report["status"] == "preliminary"
    assert report["conclusion"] == "Right lower lobe pneumonia."
    assert report["result"] == [{"reference": f"Observation/{obs['id']}"}]
    assert report["basedOn"][0]["identifier"]["value"] == "exam Number"  # RG1's accession
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{key}"
    assert is_ours(report)


async def test_a_timeout_after_the_server_stored_it_makes_no_second_copy(
        db, tmp_path, sekmet, aiohttp_server):
    """The first PUT reaches sekmet and is stored, but its answer is held past our
    timeout (a proxy in between: what a slow network or an overloaded HIS does)."""
    held = {"left": 1}

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "accept", "content-type", "prefer")}
        async with aiohttp.ClientSession() as http, http.request(
                request.method, sekmet.url + request.rel_url.raw_path_qs.removeprefix("/fhir"),
                headers=headers, data=await request.read()) as upstream:
            body = await upstream.read()
            status = upstream.status
        if request.method == "PUT" and held["left"]:
            held["left"] -= 1
            await asyncio.sleep(5)  # stored upstream; the answer comes too late
        return web.Response(status=status, body=body,
                            content_type="application/fhir+json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    proxy = await aiohttp_server(app)
    key = record_read(db, ("fhir",))
    async with aiohttp.ClientSession() as http:
        sender = make_sender(db, tmp_path, f"http://127.0.0.1:{proxy.port}/fhir", http)
        assert await sender.send_due() == 1
        [row] = outbox(db)
        assert row.status == PENDING and "timed out" in row.error
        assert len(search(sekmet, "Observation", key)) == 1  # (stored before the timeout)
        await asyncio.sleep(0.3)
        assert await sender.send_due() == 1
    [row] = outbox(db)
    assert row.status == SENT and row.attempts == 2
    assert len(search(sekmet, "Observation", key)) == 1
    assert len(search(sekmet, "DiagnosticReport", key)) == 1


async def test_a_new_version_updates_the_same_resources(db, tmp_path, sekmet):
    key = record_read(db, ("fhir",))
    async with aiohttp.ClientSession() as http:
        sender = make_sender(db, tmp_path, sekmet.url, http)
        await sender.send_due()
        record_read(db, ("fhir",), severity=2, positive=0,
                    text="FINDINGS:\nClear lungs.\n\nIMPRESSION:\nNormal chest.")
        await sender.send_due()
    [obs] = search(sekmet, "Observation", key)
    [report] = search(sekmet, "DiagnosticReport", key)
    assert obs["valueInteger"] == 2 and obs["meta"]["versionId"] != "1"
    assert report["conclusion"] == "Normal chest."


async def test_a_refusal_is_dead_lettered_with_the_his_reason(db, tmp_path, sekmet):
    key = record_read(db, ("fhir",))
    async with aiohttp.ClientSession() as http:
        # a base URL that is not the FHIR endpoint: sekmet answers 404 for the type
        sender = make_sender(db, tmp_path, sekmet.url + "/nothing-here", http)
        await sender.send_due()
    [row] = outbox(db)
    assert row.status == DEAD and "HIS refused it" in row.error
    assert search(sekmet, "Observation", key) == []
