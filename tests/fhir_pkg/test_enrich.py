"""Patient enrichment before the model call, against sekmet-fhir."""

import datetime as dt
import time

from fhir_pkg.conftest import fhir_server
from support import records
from support.fhirpeer import patient, service_request
from support.pgserver import free_port
from xrayvision.db import repo
from xrayvision.db.models import QUEUED
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.fhir.client import FhirClient
from xrayvision.fhir.enrich import PatientEnricher, lookup_key
from xrayvision.fhir.resources import order_priority


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def add(db, uid, cnp=None, name="", birth=None):
    db.write_sync(records.add_exam, ExamInfo(uid=uid, region="chest", status=QUEUED),
                  PatientInfo(cnp=cnp, name=name, birth_date=birth) if cnp else None)


async def test_birth_date_and_sex_come_from_the_his_and_are_cached(db, sekmet, http, tag):
    cnp = f"1{tag}"
    sekmet.put(patient(f"p-{tag}", cnp, "Enrich", "Ion", "1961-04-12", "male"))
    add(db, f"{tag}.1", cnp)
    add(db, f"{tag}.2", cnp)
    client = FhirClient(fhir_server(sekmet.url), http)
    enricher = PatientEnricher(client, db, identifier_system="urn:ro:cnp")
    ctx = await db.read(repo.report_context, f"{tag}.1")
    assert ctx.birth_date is None and ctx.sex == ""
    await enricher(ctx)
    ctx = await db.read(repo.report_context, f"{tag}.1")
    assert (ctx.birth_date, ctx.sex) == (dt.date(1961, 4, 12), "M")
    assert ctx.patient_name == "Enrich^Ion"  # was empty: filled in
    sent = client.requests
    await enricher(await db.read(repo.report_context, f"{tag}.2"))
    assert client.requests == sent  # same patient: from the cache


async def test_exam_without_patient_id_is_found_by_name_and_birth_date(db, sekmet, http, tag):
    sekmet.put(patient(f"p-{tag}", f"2{tag}", f"Nume{tag}", "Ana", "1985-07-01", "female"))
    add(db, f"{tag}.1")
    db.write_sync(repo.upsert_patient, PatientInfo(cnp="tmp"))  # unrelated row
    enricher = PatientEnricher(FhirClient(fhir_server(sekmet.url), http), db,
                               identifier_system="urn:ro:cnp")
    ctx = repo.ReportContext(uid=f"{tag}.1", region="chest", projection="", created=None,
                             series_datetime=None, cnp=None, patient_name=f"Nume{tag}^Ana",
                             sex="", birth_date=dt.date(1985, 7, 1), previous_report="")
    await enricher(ctx)
    ctx = await db.read(repo.report_context, f"{tag}.1")
    assert (ctx.cnp, ctx.sex, ctx.birth_date) == (f"2{tag}", "F", dt.date(1985, 7, 1))


async def test_the_orders_priority_raises_the_exams(db, sekmet, http, tag):
    """The ServiceRequest carrying the exam's accession says stat: the exam becomes stat
    and critical until reviewed; an order saying routine never lowers an urgent exam."""
    cnp = f"4{tag}"
    sekmet.put(patient(f"p-{tag}", cnp, "Ordin", "Ana", "1970-01-01", "female"))
    for n, priority in ((1, "stat"), (2, "routine")):
        order = service_request(f"sr{n}-{tag}", f"p-{tag}", accession=f"A{n}-{tag}")
        sekmet.put({**order, "priority": priority})
    db.write_sync(records.add_exam, ExamInfo(uid=f"{tag}.1", region="chest", status=QUEUED,
                                             accession=f"A1-{tag}"), PatientInfo(cnp=cnp))
    db.write_sync(records.add_exam, ExamInfo(uid=f"{tag}.2", region="chest", status=QUEUED,
                                             accession=f"A2-{tag}", priority=1),
                  PatientInfo(cnp=cnp))
    enricher = PatientEnricher(FhirClient(fhir_server(sekmet.url), http), db,
                               identifier_system="urn:ro:cnp")
    for uid in (f"{tag}.1", f"{tag}.2"):
        await enricher(await db.read(repo.report_context, uid))
    first = (await db.read(repo.get_exam, f"{tag}.1")).exam
    assert (first.priority, first.triage) == (3, 1)
    second = (await db.read(repo.get_exam, f"{tag}.2")).exam
    assert (second.priority, second.triage) == (1, 0)


def test_order_priority_of_the_request_with_the_accession():
    orders = [{**service_request("a", "p", accession="X1"), "priority": "asap"},
              service_request("b", "p", accession="X2")]
    assert order_priority(orders, "X1") == 2
    assert order_priority(orders, "X2") is None  # no priority stated
    assert order_priority(orders, "X3") is None and order_priority(orders, "") is None


async def test_unknown_patient_is_cached_as_a_miss(db, sekmet, http, tag):
    add(db, f"{tag}.1", f"none-{tag}")
    client = FhirClient(fhir_server(sekmet.url), http)
    enricher = PatientEnricher(client, db, identifier_system="urn:ro:cnp")
    ctx = await db.read(repo.report_context, f"{tag}.1")
    await enricher(ctx)
    await enricher(ctx)
    assert client.requests == 1
    assert (await db.read(repo.report_context, f"{tag}.1")).sex == ""


async def test_fhir_down_never_blocks_and_pauses_lookups(db, http, tag):
    add(db, f"{tag}.1", f"3{tag}")
    clock = Clock()
    client = FhirClient(fhir_server(f"http://127.0.0.1:{free_port()}/fhir", max_attempts=5),
                        http, backoff=5.0)
    enricher = PatientEnricher(client, db, budget=0.5, pause=60, clock=clock)
    ctx = await db.read(repo.report_context, f"{tag}.1")
    started = time.monotonic()
    await enricher(ctx)  # retries with 5 s back-off would take long: the budget cuts it
    assert time.monotonic() - started < 2.0
    tries = client.requests
    await enricher(ctx)
    assert client.requests == tries  # paused after the failure
    clock.now += 61
    await enricher(ctx)
    assert client.requests > tries


def test_lookup_key():
    base = dict(uid="u", region="", projection="", created=None, series_datetime=None,
                sex="", previous_report="")
    assert lookup_key(repo.ReportContext(cnp="5", patient_name="", birth_date=None,
                                         **base)) == ("id", "5")
    assert lookup_key(repo.ReportContext(cnp=None, patient_name="POP^ION",
                                         birth_date=dt.date(1990, 1, 2), **base)) == (
        "name", "POP", "1990-01-02")
    assert lookup_key(repo.ReportContext(cnp=None, patient_name="POP", birth_date=None,
                                         **base)) is None
