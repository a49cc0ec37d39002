"""The poller end to end: the database (SQLite and PostgreSQL), a real FHIR server
(sekmet-fhir), the real pipeline's CHK and TRN against the stub model server."""

import contextlib
import dataclasses
import datetime as dt

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from fhir_pkg.conftest import fhir_server
from support import records
from support.fhirpeer import diagnostic_report, patient, service_request
from support.httppeer import serving
from support.model_stub import Stub
from xrayvision.ai.client import Endpoint, ModelClient
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.text import TextServices
from xrayvision.config import FhirSettings, Settings
from xrayvision.db import repo
from xrayvision.db.models import DONE
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.events import LocalBus
from xrayvision.fhir.client import FhirClient
from xrayvision.fhir.poller import LAST_POLL_KEY, Poller

DAY1 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
RO = "Opacitate în baza dreaptă, sinusuri libere. ă â î ș ț"


def add_exam(db, uid, cnp, *, study="", accession="", region="chest", when=DAY1):
    db.write_sync(records.add_exam,
                  ExamInfo(uid=uid, study_uid=study, accession=accession, region=region,
                           series_datetime=when, status=DONE),
                  PatientInfo(cnp=cnp))


@contextlib.asynccontextmanager
async def poller_for(db, tmp_path, fhir_url, *, stub=None, password=None, **fhir_overrides):
    own_stub = stub is None
    stub = stub or await Stub().start()
    bus = LocalBus()
    await bus.start()
    settings = dataclasses.replace(
        Settings(), fhir=FhirSettings(url=fhir_url, **fhir_overrides))
    async with aiohttp.ClientSession() as session:
        model = ModelClient([Endpoint("primary", stub.url, "m")], session, backoff=0.01,
                            max_attempts=1)
        text_services = TextServices(model, load_prompts(None))
        server = fhir_server(fhir_url, timeout=10, max_attempts=2)
        if password is not None:
            server = dataclasses.replace(server, password=password)
        client = FhirClient(server, session, backoff=0.01)
        try:
            with bus.subscribe() as events:
                yield Poller(client, db, text_services, bus, settings), stub, events
        finally:
            if own_stub:
                await stub.stop()


def blood_count(rid: str, pid: str) -> dict:
    """A laboratory's final blood count, 15 minutes after DAY1's X-rays, no order link."""
    return diagnostic_report(rid, pid, "Hemoglobină 13,5 g/dL, leucocite 7,2",
                             code="Hemoleucogramă completă", loinc="58410-2", category="LAB",
                             when="2026-11-20T09:15:00Z")


def drain(events):
    found = []
    while (event := events.get_nowait()) is not None:
        found.append(event)
    return found


async def test_reports_are_matched_checked_translated_and_stored_once(db, tmp_path, sekmet,
                                                                      tag):
    cnp, pid = f"1{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S1-{tag}", accession=f"A1-{tag}")  # PA
    add_exam(db, f"{tag}.2", cnp, study=f"S1-{tag}", accession=f"A1-{tag}")  # lateral
    add_exam(db, f"{tag}.3", cnp, study=f"S2-{tag}", region="leg",
             when=DAY1 + dt.timedelta(days=1))
    add_exam(db, f"{tag}.4", cnp, study=f"S3-{tag}", accession=f"A3-{tag}")
    sekmet.put(patient(pid, cnp, "Popescu", "Ion", "1980-01-01", "male"))
    sekmet.put(service_request(f"s3-{tag}", pid, accession=f"A3-{tag}"))
    sekmet.put(diagnostic_report(f"r1-{tag}", pid, RO, accession=f"A1-{tag}",
                                 radiologist="Dr. Ionescu"))
    sekmet.put(diagnostic_report(f"r2-{tag}", pid, "Genunchi: artroză ușoară", code="Rx genunchi",
                                 when="2026-11-21T15:00:00Z", radiologist="Dr. Pop"))
    sekmet.put(diagnostic_report(f"r3-{tag}", pid, "Fractură costală", based_on=f"s3-{tag}"))
    stub = await Stub().start()
    stub.state.checks = {"artroză": {"positive": 0, "severity": 2, "confidence": 70,
                                     "summary": "mild arthrosis"}}
    chest_6 = {"source": "rad", "region": "chest", "severity": "6"}
    before = REGISTRY.get_sample_value("xrayvision_severity_total", chest_6) or 0
    try:
        async with poller_for(db, tmp_path, sekmet.url, stub=stub) as (poller, _, events):
            stats = await poller.poll_once()
            # read per study (the default) the metric counts studies: S1 (two images), S3
            assert REGISTRY.get_sample_value("xrayvision_severity_total", chest_6) == (
                before + 2)
            assert (stats.patients, stats.new, stats.ambiguous, stats.errors) == (1, 4, 0, [])
            assert stats.requests == 1  # one search for the patient, nothing per exam
            model_calls = len(stub.state.requests)
            assert model_calls == 6  # CHK + TRN for each of the three reports

            for uid in (f"{tag}.1", f"{tag}.2"):
                rad = await db.read(records.get_rad_report, uid)
                assert rad.text == RO  # Romanian diacritics unchanged
                assert rad.text_en == "[en] " + RO
                assert (rad.fhir_id, rad.radiologist, rad.severity, rad.positive) == (
                    f"r1-{tag}", "Dr. Ionescu", 6, 1)
                assert rad.checked and rad.fhir_status == "final" and rad.fhir_version == "1"
            knee = await db.read(records.get_rad_report, f"{tag}.3")
            assert (knee.fhir_id, knee.severity, knee.summary) == (f"r2-{tag}", 2,
                                                                   "mild arthrosis")
            assert (await db.read(records.get_rad_report, f"{tag}.4")).fhir_id == f"r3-{tag}"
            # ... and linked to the studies (read per study, agreement compares these)
            for study, report in ((f"S1-{tag}", f"r1-{tag}"), (f"S2-{tag}", f"r2-{tag}"),
                                  (f"S3-{tag}", f"r3-{tag}")):
                assert (await db.read(records.get_rad_report, study)).fhir_id == report
            ready = [e for e in drain(events) if e.type == "rad_report.ready"]
            assert sorted(e.data["uid"] for e in ready) == [f"{tag}.{i}" for i in (1, 2, 3, 4)]

            again = await poller.poll_once()
            assert (again.patients, again.new, again.amended) == (0, 0, 0)
            assert len(stub.state.requests) == model_calls
            assert await db.read(repo.get_state, LAST_POLL_KEY)
    finally:
        await stub.stop()


async def test_amended_report_replaces_the_final_one(db, tmp_path, sekmet, tag):
    cnp, pid = f"2{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S-{tag}", accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Amend", "Ana", "1970-01-01", "female"))
    sekmet.put(diagnostic_report(f"r-{tag}", pid, "Fără modificări", accession=f"A-{tag}"))
    async with poller_for(db, tmp_path, sekmet.url) as (poller, stub, events):
        assert (await poller.poll_once()).new == 1
        sekmet.put(diagnostic_report(f"r-{tag}", pid, "Addendum: nodul 8 mm lob superior drept",
                                     status="amended", accession=f"A-{tag}"))
        drain(events)
        stats = await poller.poll_once()
        assert (stats.amended, stats.new, stats.patients) == (1, 0, 0)  # via the update search
        rad = await db.read(records.get_rad_report, f"{tag}.1")
        assert rad.text == "Addendum: nodul 8 mm lob superior drept"
        assert rad.text_en == "[en] Addendum: nodul 8 mm lob superior drept"
        assert (rad.fhir_status, rad.fhir_version) == ("amended", "2")
        assert [e.data["amended"] for e in drain(events)] == [True]
        assert await db.read(records.count_exams) >= 1
        rows = await db.read(repo.list_exams, repo.ExamFilter(search=cnp))
        assert rows.total == 1 and rows.rows[0].rad.fhir_id == f"r-{tag}"


async def test_ambiguous_match_is_not_linked(db, tmp_path, sekmet, tag):
    cnp, pid = f"3{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S1-{tag}")
    add_exam(db, f"{tag}.2", cnp, study=f"S2-{tag}", when=DAY1 + dt.timedelta(hours=2))
    sekmet.put(patient(pid, cnp, "Amb", "Ion", "1980-01-01", "male"))
    sekmet.put(diagnostic_report(f"r-{tag}", pid, "Ceva", when="2026-11-20T12:00:00Z"))
    async with poller_for(db, tmp_path, sekmet.url) as (poller, stub, _):
        stats = await poller.poll_once()
    assert (stats.ambiguous, stats.new) == (1, 0)
    [row] = [r for r in await db.read(repo.unlinked_reports) if r.fhir_id == f"r-{tag}"]
    assert (row.rule, row.reason) == ("ambiguous", "it fits exams of 2 studies")
    assert await db.read(records.get_rad_report, f"{tag}.1") is None
    assert await db.read(records.get_rad_report, f"{tag}.2") is None
    assert stub.state.requests == []


async def test_model_down_stores_unchecked_then_checks_later(db, tmp_path, sekmet, tag):
    cnp, pid = f"4{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Down", "Ion", "1980-01-01", "male"))
    sekmet.put(diagnostic_report(f"r-{tag}", pid, "Pneumonie", accession=f"A-{tag}"))
    async with poller_for(db, tmp_path, sekmet.url) as (poller, stub, _):
        stub.state.mode = "500"
        stats = await poller.poll_once()
        assert (stats.new, stats.unchecked) == (1, 1)
        rad = await db.read(records.get_rad_report, f"{tag}.1")
        assert rad.text == "Pneumonie" and not rad.checked and rad.severity == -1
        stub.state.mode = "ok"
        await poller.checker.client.check_all()  # what the role's health loop does
        stats = await poller.poll_once()
        assert (stats.rechecked, stats.new, stats.patients) == (1, 0, 0)
        rad = await db.read(records.get_rad_report, f"{tag}.1")
        assert rad.checked and rad.severity == 6 and rad.text_en == "[en] Pneumonie"


async def test_fhir_failure_mid_paging_stores_nothing_twice_and_is_reported(db, tmp_path, tag):
    """Page 1 answers, page 2 fails: the patient's reports wait for the next cycle, the
    last-poll mark does not move, and a later good cycle stores each report once."""
    add_exam(db, f"{tag}.1", "777", accession="ACC7")
    state = {"fail": True, "url": ""}
    report = diagnostic_report("r7", "p7", "Normal", accession="ACC7")

    async def handle(request):
        if request.query.get("page") == "2":
            if state["fail"]:
                return web.json_response({"resourceType": "OperationOutcome", "issue": []},
                                         status=503)
            return web.json_response({"resourceType": "Bundle", "type": "searchset",
                                      "entry": [{"resource": report}]})
        return web.json_response({
            "resourceType": "Bundle", "type": "searchset",
            "link": [{"relation": "next", "url": state["url"] + "/fhir/x?page=2"}],
            "entry": [{"resource": report}]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app) as url:
        state["url"] = url
        async with poller_for(db, tmp_path, url + "/fhir") as (poller, stub, _):
            stats = await poller.poll_once()
            assert not stats.ok and stats.new == 0 and stats.failed_patients == 1
            assert await db.read(repo.get_state, LAST_POLL_KEY) is None
            state["fail"] = False
            stats = await poller.poll_once()
            assert stats.ok and stats.new == 1
            assert (await db.read(records.get_rad_report, f"{tag}.1")).fhir_id == "r7"
            assert len(stub.state.requests) == 2


async def test_fhir_down_fails_the_cycle_after_one_patient(db, tmp_path, tag):
    from support.pgserver import free_port
    for i in range(5):
        add_exam(db, f"{tag}.{i}", f"9{i}{tag}")
    url = f"http://127.0.0.1:{free_port()}/fhir"
    async with poller_for(db, tmp_path, url, concurrency=1) as (poller, _, _):
        stats = await poller.poll_once()
    assert not stats.ok and stats.failed_patients == 1  # the rest is not asked
    assert stats.requests == 2  # one patient, two tries


async def test_run_backs_off_after_failures(db, tmp_path):
    from support.pgserver import free_port

    delays = []

    async def fake_sleep(seconds):
        delays.append(seconds)
        if len(delays) == 3:
            raise RuntimeError("stop")

    add_exam(db, "9.9.1", "999")
    url = f"http://127.0.0.1:{free_port()}/fhir"
    async with poller_for(db, tmp_path, url, poll_interval=10) as (poller, _, _):
        poller._sleep = fake_sleep
        with pytest.raises(RuntimeError, match="stop"):
            await poller.run()
    assert delays == [20, 40, 80]


async def test_a_laboratory_report_is_never_the_radiologists(db, tmp_path, sekmet, tag):
    """A final blood count (category LAB, LOINC 58410-2, 15 minutes after the X-ray, no
    order link) beside the radiology report linked by accession, stored later: the
    radiology report is the exam's; the laboratory one never travels or links."""
    cnp, pid = f"5{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S-{tag}", accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Lab", "Ion", "1980-01-01", "male"))
    sekmet.put(blood_count(f"lab-{tag}", pid))
    async with poller_for(db, tmp_path, sekmet.url) as (poller, stub, _):
        stats = await poller.poll_once()
        assert (stats.patients, stats.new, stats.unmatched, stats.not_imaging) == (1, 0, 0, 0)
        assert await db.read(records.get_rad_report, f"{tag}.1") is None
        assert stub.state.requests == []  # nothing checked or translated
        sekmet.put(diagnostic_report(f"rad-{tag}", pid, "Opacitate bazală dreaptă",
                                     accession=f"A-{tag}", when="2026-11-20T08:00:00Z"))
        stats = await poller.poll_once()
        assert stats.new == 1
        assert (await db.read(records.get_rad_report, f"{tag}.1")).fhir_id == f"rad-{tag}"
        assert (await db.read(records.get_rad_report, f"S-{tag}")).fhir_id == f"rad-{tag}"


async def test_without_a_category_filter_the_rules_still_refuse_it(db, tmp_path, sekmet, tag):
    """With the category filter off (``report_categories`` empty), the same laboratory
    report names no region or radiograph: not linked by date. A radiology report matched
    by accession beats one matched by date, although the date match is later."""
    cnp, pid = f"6{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S-{tag}", accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Lab", "Ana", "1980-01-01", "female"))
    sekmet.put(blood_count(f"lab-{tag}", pid))
    sekmet.put(diagnostic_report(f"date-{tag}", pid, "Rx torace: normal", category="",
                                 when="2026-11-20T11:00:00Z"))
    sekmet.put(diagnostic_report(f"acc-{tag}", pid, "Opacitate bazală dreaptă",
                                 accession=f"A-{tag}", when="2026-11-20T10:00:00Z"))
    async with poller_for(db, tmp_path, sekmet.url, report_categories=()) as (poller, _, _):
        stats = await poller.poll_once()
    assert (stats.new, stats.unmatched) == (1, 1)  # the laboratory report: no match
    assert (await db.read(records.get_rad_report, f"{tag}.1")).fhir_id == f"acc-{tag}"
    # listed for the admins with the patient and why
    [row] = [r for r in await db.read(repo.unlinked_reports) if r.fhir_id == f"lab-{tag}"]
    assert (row.cnp, row.rule) == (cnp, "none") and "no region or radiograph" in row.reason


async def test_any_identifier_when_no_system_is_set_amendments_included(db, tmp_path, sekmet,
                                                                        tag):
    """``identifier_system`` empty and the hospital record number listed before the CNP:
    the amendment search still finds the patient's exams."""
    cnp, pid = f"7{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Mrn", "Ion", "1980-01-01", "male", mrn=f"MRN-{tag}"))
    sekmet.put(diagnostic_report(f"r-{tag}", pid, "Normal", accession=f"A-{tag}"))
    async with poller_for(db, tmp_path, sekmet.url, identifier_system="") as (poller, _, _):
        assert (await poller.poll_once()).new == 1
        sekmet.put(diagnostic_report(f"r-{tag}", pid, "Addendum: nodul", status="amended",
                                     accession=f"A-{tag}"))
        stats = await poller.poll_once()
        assert (stats.amended, stats.patients) == (1, 0)  # through the amendment search
    assert (await db.read(records.get_rad_report, f"{tag}.1")).text == "Addendum: nodul"


@pytest.mark.parametrize("withdrawal", ["entered-in-error", "cancelled"])
async def test_a_withdrawn_report_leaves_the_study_and_agreement_for_the_history(
        db, tmp_path, sekmet, tag, withdrawal):
    """final -> amended (the final one kept as history) -> entered-in-error: withdrawn
    from the image and the study, out of the statistics, kept in the history, audited."""
    from xrayvision.db import stats
    from xrayvision.db.models import AuditLog

    cnp, pid = f"8{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S-{tag}", accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Retras", "Ion", "1980-01-01", "male"))
    sekmet.put(diagnostic_report(f"r-{tag}", pid, "Pneumonie", accession=f"A-{tag}"))

    def rad_reports(session):
        return sum(stats.figures(session).rad.values())  # (images: the test makes no study)

    async with poller_for(db, tmp_path, sekmet.url) as (poller, _, events):
        assert (await poller.poll_once()).new == 1
        counted = await db.read(rad_reports)
        assert counted >= 1
        sekmet.put(diagnostic_report(f"r-{tag}", pid, "Pneumonie; addendum", status="amended",
                                     accession=f"A-{tag}"))
        assert (await poller.poll_once()).amended == 1
        history = await db.read(repo.rad_history, f"{tag}.1")
        assert [(h.text, h.fhir_status, h.ended_by) for h in history] == [
            ("Pneumonie", "final", "replaced")]
        assert [h.ended_by for h in await db.read(repo.rad_history, f"S-{tag}")] == ["replaced"]
        drain(events)
        sekmet.put(diagnostic_report(f"r-{tag}", pid, "Pneumonie; addendum",
                                     status=withdrawal, accession=f"A-{tag}"))
        stats_ = await poller.poll_once()
        assert (stats_.withdrawn, stats_.new, stats_.amended) == (1, 0, 0)
        assert await db.read(records.get_rad_report, f"{tag}.1") is None
        assert await db.read(records.get_rad_report, f"S-{tag}") is None
        assert await db.read(rad_reports) == counted - 1
        history = await db.read(repo.rad_history, f"{tag}.1")
        assert [(h.text, h.fhir_status, h.ended_by) for h in history] == [
            ("Pneumonie", "final", "replaced"),
            ("Pneumonie; addendum", "amended", withdrawal)]
        [event] = [e for e in drain(events) if e.type == "rad_report.ready"]
        assert event.data["withdrawn"] is True and event.data["uid"] == f"{tag}.1"
        audit = await db.read(lambda s: s.query(AuditLog).filter_by(
            action="rad_report.withdrawn", target=f"r-{tag}").all())
        assert len(audit) == 1 and withdrawal in audit[0].detail
        # the image is without a report again: asked again, nothing more happens
        again = await poller.poll_once()
        assert (again.patients, again.withdrawn, again.new) == (1, 0, 0)


async def test_the_self_check_says_what_looks_wrong(db, tmp_path, sekmet, tag, caplog):
    """Right settings: nothing to say. A system no Patient has, a wrong password: a
    warning with the reason, kept for the dashboard (state row, gauge)."""
    from xrayvision.fhir.health import HEALTH_KEY, FhirHealth

    sekmet.put(patient(f"p-{tag}", f"9{tag}", "Check", "Ion", "1980-01-01", "male"))
    async with poller_for(db, tmp_path, sekmet.url) as (poller, _, _):
        assert await poller.self_check() == ""
    assert FhirHealth.from_json(await db.read(repo.get_state, HEALTH_KEY)).ok
    assert REGISTRY.get_sample_value("xrayvision_fhir_healthy") == 1
    async with poller_for(db, tmp_path, sekmet.url,
                          identifier_system="urn:oid:2.16.840.1.113883.4.1") as (poller, _, _):
        warning = await poller.self_check()
    assert "no Patient on the FHIR server has an identifier in system urn:oid:2.16" in warning
    assert "identifier_system is probably not your HIS's" in caplog.text
    stored = FhirHealth.from_json(await db.read(repo.get_state, HEALTH_KEY))
    assert stored.warning == warning and not stored.ok
    assert REGISTRY.get_sample_value("xrayvision_fhir_healthy") == 0
    caplog.clear()
    async with poller_for(db, tmp_path, sekmet.url, password="wrong") as (poller, _, _):
        warning = await poller.self_check()
    assert warning.startswith("the FHIR server refused our credentials (HTTP 401")
    failed = [r for r in caplog.records if r.getMessage() == "FHIR request failed"]
    assert failed and failed[0].status == 401 and failed[0].path.endswith("/fhir/Patient")


async def test_refused_credentials_fail_the_cycle_with_patients_waiting(db, tmp_path, sekmet,
                                                                        tag, caplog):
    """401 on a patient's search is not about the patient: the cycle fails (back-off,
    alert, dashboard) with the status and the server's words; no CNP in the log."""
    cnp = f"1800101{int(tag, 16) % 10**6:06d}"  # a CNP's 13 digits
    add_exam(db, f"{tag}.1", cnp, accession=f"A-{tag}")
    add_exam(db, f"{tag}.2", f"2{cnp[1:]}", accession=f"B-{tag}")
    async with poller_for(db, tmp_path, sekmet.url, password="wrong",
                          concurrency=1) as (poller, _, _):
        stats = await poller.poll_once()
    assert not stats.ok and stats.failed_patients == 1  # the second is not asked
    assert "credentials refused: HTTP 401" in stats.errors[0]
    failed = [r for r in caplog.records if r.getMessage() == "FHIR request failed"]
    assert failed[0].status == 401 and failed[0].path.endswith("/DiagnosticReport")
    assert cnp not in caplog.text


async def test_a_radiologist_referenced_only_by_practitioner_is_named(db, tmp_path, sekmet,
                                                                      tag):
    """``resultsInterpreter`` as HIS exports often write it: a reference, no display."""
    cnp, pid = f"9{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Ref", "Ion", "1980-01-01", "male"))
    sekmet.put({"resourceType": "Practitioner", "id": f"dr-{tag}",
                "name": [{"prefix": ["Dr."], "given": ["Maria"], "family": "Ionescu"}]})
    report = diagnostic_report(f"r-{tag}", pid, "Normal", accession=f"A-{tag}")
    report["resultsInterpreter"] = [{"reference": f"Practitioner/dr-{tag}"}]
    sekmet.put(report)
    async with poller_for(db, tmp_path, sekmet.url) as (poller, _, _):
        stats = await poller.poll_once()
    assert stats.new == 1 and stats.requests == 1  # the Practitioner came included
    assert (await db.read(records.get_rad_report, f"{tag}.1")).radiologist == "Dr. Maria Ionescu"


async def test_enrichment_missed_during_an_outage_is_made_by_a_later_cycle(db, tmp_path, sekmet,
                                                                           tag):
    """The relay's lookup failed (HIS down) when the exam was read: the poller's next
    cycle fills in sex and birth date, and the stat order raises the priority."""
    from support.pgserver import free_port
    from xrayvision.fhir.enrich import PatientEnricher

    cnp, pid = f"1{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, accession=f"A-{tag}")
    sekmet.put(patient(pid, cnp, "Later", "Ana", "1975-03-02", "female"))
    order = service_request(f"s-{tag}", pid, accession=f"A-{tag}")
    sekmet.put({**order, "priority": "stat"})
    async with aiohttp.ClientSession() as session:
        down = FhirClient(fhir_server(f"http://127.0.0.1:{free_port()}/fhir", max_attempts=1),
                          session)
        await PatientEnricher(down, db)(await db.read(repo.report_context, f"{tag}.1"))
    context = await db.read(repo.report_context, f"{tag}.1")
    assert (context.sex, context.birth_date, context.priority) == ("", None, 0)
    async with poller_for(db, tmp_path, sekmet.url) as (poller, _, _):
        poller.enrich = PatientEnricher(poller.client, db, identifier_system="urn:ro:cnp")
        stats = await poller.poll_once()
        assert stats.enrichment_retried == 1
        context = await db.read(repo.report_context, f"{tag}.1")
        assert (context.sex, context.birth_date, context.priority) == (
            "F", dt.date(1975, 3, 2), 3)
        assert (await poller.poll_once()).enrichment_retried == 0  # nothing left to fill


async def test_an_unlinked_report_leaves_the_list_once_linked(db, tmp_path, sekmet, tag):
    """A report whose accession number names no exam is listed with it and why; the HIS
    corrects the accession: the next cycle links it and it leaves the list."""
    cnp, pid = f"2{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"S1-{tag}", accession=f"A1-{tag}")
    sekmet.put(patient(pid, cnp, "Fix", "Ion", "1980-01-01", "male"))
    sekmet.put(diagnostic_report(f"r-{tag}", pid, "Normal", accession=f"TYPO-{tag}"))

    async def listed():
        return {r.fhir_id: r for r in await db.read(repo.unlinked_reports)}

    async with poller_for(db, tmp_path, sekmet.url) as (poller, _, _):
        assert (await poller.poll_once()).unmatched == 1
        row = (await listed())[f"r-{tag}"]
        assert (row.cnp, row.accessions, row.rule) == (cnp, f"TYPO-{tag}", "none")
        assert "names no exam of the patient" in row.reason
        sekmet.put(diagnostic_report(f"r-{tag}", pid, "Normal", status="corrected",
                                     accession=f"A1-{tag}"))
        assert (await poller.poll_once()).new == 1
    assert f"r-{tag}" not in await listed()


async def test_a_cycle_that_asks_nothing_never_calls_an_unreachable_his_healthy(db, tmp_path):
    """Nothing to ask this cycle (no exams): the HIS's health stays what the last request
    found (here: unreachable), and the poller asks once more rather than claim it is up."""
    from support.pgserver import free_port
    from xrayvision.fhir.health import HEALTH_KEY, FhirHealth

    async def stop(seconds):
        raise RuntimeError("stop")

    url = f"http://127.0.0.1:{free_port()}/fhir"
    async with poller_for(db, tmp_path, url) as (poller, _, _):
        poller._sleep = stop
        with pytest.raises(RuntimeError, match="stop"):
            await poller.run()
        sent = poller.client.requests
    health = FhirHealth.from_json(await db.read(repo.get_state, HEALTH_KEY))
    assert not health.ok and health.last_success is None
    assert "unavailable after 2 tries" in health.last_error
    assert sent == 4  # the self-check at start and again after the empty cycle, 2 tries each


async def test_a_report_linked_by_the_imaging_study_it_reports_on(db, tmp_path, sekmet, tag):
    """No identifiers and no order on the report, two chest studies the same morning
    (by date: ambiguous): its ``imagingStudy`` names the study; read once, cached."""
    cnp, pid = f"3{tag}", f"p-{tag}"
    add_exam(db, f"{tag}.1", cnp, study=f"1.2.{int(tag, 16) % 10**9}.1")
    add_exam(db, f"{tag}.2", cnp, study=f"1.2.{int(tag, 16) % 10**9}.2",
             when=DAY1 + dt.timedelta(hours=1))
    sekmet.put(patient(pid, cnp, "Study", "Ion", "1980-01-01", "male"))
    sekmet.put({"resourceType": "ImagingStudy", "id": f"is-{tag}", "status": "available",
                "subject": {"reference": f"Patient/{pid}"},
                "identifier": [{"system": "urn:dicom:uid",
                                "value": f"urn:oid:1.2.{int(tag, 16) % 10**9}.2"}]})
    report = diagnostic_report(f"r-{tag}", pid, "Rx torace: normal",
                               when="2026-11-20T12:00:00Z")
    report["imagingStudy"] = [{"reference": f"ImagingStudy/is-{tag}"}]
    sekmet.put(report)
    async with poller_for(db, tmp_path, sekmet.url) as (poller, _, _):
        stats = await poller.poll_once()
        assert (stats.new, stats.ambiguous, stats.requests) == (1, 0, 2)  # search + study
        assert await db.read(records.get_rad_report, f"{tag}.1") is None
        assert (await db.read(records.get_rad_report, f"{tag}.2")).fhir_id == f"r-{tag}"
        # again: .1 still waits (search) + the amendment search; the study from the cache
        assert (await poller.poll_once()).requests == 2


def test_model_label_values_are_bounded():
    from xrayvision.agreement import Confusion
    from xrayvision.fhir.poller import bounded

    counts = {"mg": Confusion(tp=1), "x1": Confusion(tn=2), "x2": Confusion(fp=1)}
    assert bounded(counts, frozenset({"mg"})) == {"mg": Confusion(tp=1),
                                                  "other": Confusion(tn=2, fp=1)}


async def test_agreement_per_model_is_exported(db, tmp_path):
    """xrayvision_model_agreement_ratio: the live models' and the shadow models' share of
    units agreeing with the radiologist (and the shadow's with the live read)."""
    from xrayvision.db.models import utcnow

    settings = dataclasses.replace(Settings(), ai=dataclasses.replace(
        Settings().ai, model="mg", read_per="image", shadow_model="mg-q4"))
    poller = Poller(None, db, None, LocalBus(), settings)  # only the export is used here
    for i, (live, rad, shadow) in enumerate([(7, 8, 2), (1, 0, 1), (6, 1, 6)]):
        uid = f"7.7.{i}"
        db.write_sync(records.add_exam, ExamInfo(uid=uid, region="chest", status=DONE))
        db.write_sync(repo.save_ai_read, uid, text="x", severity=live, positive=1,
                      model="mg" if i < 2 else "renamed-by-hand", endpoint="primary",
                      prompt_version="p", threshold=5)
        db.write_sync(repo.save_rad_report, uid, severity=rad, positive=1, summary="",
                      text_en="", checked=True)
        db.write_sync(repo.save_shadow_read, uid, text="y", positive=1, severity=shadow,
                      confidence=-1, summary="", model="mg-q4", endpoint="shadow",
                      latency=1.0, prompt_version="p")
    await poller._export_agreement(utcnow())

    def ratio(model, role, reference):
        return REGISTRY.get_sample_value("xrayvision_model_agreement_ratio", {
            "model": model, "role": role, "reference": reference})

    assert ratio("mg", "live", "radiologist") == 1.0  # 7.7.0 TP, 7.7.1 TN
    assert ratio("other", "live", "radiologist") == 0.0  # 7.7.2 FP, a bounded label
    assert ratio("mg-q4", "shadow", "radiologist") == pytest.approx(1 / 3)  # FN, TN, FP
    assert ratio("mg-q4", "shadow", "live") == pytest.approx(2 / 3)
    assert REGISTRY.get_sample_value("xrayvision_model_compared_units", {
        "model": "mg-q4", "role": "shadow", "reference": "live"}) == 3
