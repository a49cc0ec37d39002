"""The FHIR client against a real server (sekmet-fhir) and, for faults that server does
not produce, a small aiohttp stub."""

import asyncio
import base64
import json

import pytest
from aiohttp import web

from fhir_pkg.conftest import fhir_server
from support.fhirpeer import (
    diagnostic_report,
    patient,
    service_request,
)
from support.httppeer import serving
from xrayvision import metrics
from xrayvision.fhir.client import (
    FhirBadResponse,
    FhirClient,
    FhirHTTPError,
    FhirUnavailable,
    operation_outcome_text,
    retry_after,
)
from xrayvision.fhir.resources import report_of

# --- against sekmet-fhir ---------------------------------------------------------------


async def test_patient_search_by_identifier_and_by_name_and_birth_date(sekmet, sekmet_client,
                                                                       tag):
    cnp = f"18001{tag}"
    sekmet.put(patient(f"p-{tag}", cnp, f"Popescu{tag}", "Ion", "1980-01-01", "male"))
    sekmet.put(patient(f"q-{tag}", f"2{tag}", f"Popescu{tag}", "Ana", "1990-05-05", "female"))
    found = await sekmet_client.find_patients(identifier=cnp, system="urn:ro:cnp")
    assert [p["id"] for p in found] == [f"p-{tag}"]
    assert await sekmet_client.find_patients(identifier=cnp, system="urn:other") == []
    found = await sekmet_client.find_patients(name=f"Popescu{tag}", birth_date="1990-05-05")
    assert [p["id"] for p in found] == [f"q-{tag}"]
    assert await sekmet_client.find_patients() == []


async def test_paging_over_several_bundles(sekmet, http, tag):
    pid = f"p-{tag}"
    sekmet.put(patient(pid, f"1{tag}", "Pag", "Ina", "1970-02-02", "female"))
    sekmet.load([diagnostic_report(f"r{i}-{tag}", pid, f"raport {i}") for i in range(23)])
    client = FhirClient(fhir_server(sekmet.url), http, page_size=5)
    result = await client.diagnostic_reports(patient_id=pid)
    assert result.pages == 5
    assert sorted(r["id"] for r in result.matches) == sorted(f"r{i}-{tag}" for i in range(23))
    assert [r["resourceType"] for r in result.included] == ["Patient"] * 5  # once per page


async def test_reports_by_chained_identifier_with_based_on_requests(sekmet, sekmet_client, tag):
    pid, cnp = f"p-{tag}", f"5{tag}"
    sekmet.put(patient(pid, cnp, "Chain", "Dan", "1960-03-03", "male"))
    sekmet.put(service_request(f"s1-{tag}", pid, accession=f"A1-{tag}"))
    sekmet.put(service_request(f"s2-{tag}", pid, accession=f"A2-{tag}"))
    sekmet.put(diagnostic_report(f"r1-{tag}", pid, "unu", based_on=f"s1-{tag}"))
    sekmet.put(diagnostic_report(f"r2-{tag}", pid, "doi", based_on=f"s2-{tag}"))
    sekmet.put(diagnostic_report(f"r3-{tag}", pid, "preliminar", status="preliminary"))
    result = await sekmet_client.diagnostic_reports(identifier=cnp, system="urn:ro:cnp")
    assert sorted(r["id"] for r in result.matches) == [f"r1-{tag}", f"r2-{tag}"]
    assert sorted(r["id"] for r in result.included if r["resourceType"] == "ServiceRequest") == [
        f"s1-{tag}", f"s2-{tag}"]
    only = await sekmet_client.diagnostic_reports(patient_id=pid, based_on=f"s2-{tag}")
    assert [r["id"] for r in only.matches] == [f"r2-{tag}"]
    requests = await sekmet_client.service_requests(pid)
    assert sorted(r["id"] for r in requests) == [f"s1-{tag}", f"s2-{tag}"]


async def test_romanian_html_and_non_utf8_attachments_from_the_server(sekmet, sekmet_client,
                                                                      tag):
    pid = f"p-{tag}"
    text = "Opacitate în baza dreaptă, ă â î ș ț"
    sekmet.put(patient(pid, f"6{tag}", "Diacritice", "Ștefan", "1950-01-01", "male"))
    sekmet.put(diagnostic_report(f"u-{tag}", pid, text, content_type="text/plain; charset=utf-8"))
    sekmet.put(diagnostic_report(f"h-{tag}", pid, f"<p>{text}</p>",
                                 content_type="text/html; charset=utf-8"))
    sekmet.put(diagnostic_report(f"w-{tag}", pid, "Fără leziuni", content_type="text/plain",
                                 encoding="windows-1250"))
    result = await sekmet_client.diagnostic_reports(patient_id=pid)
    reports = {r["id"]: report_of(r) for r in result.matches}
    assert reports[f"u-{tag}"].text == text
    assert reports[f"h-{tag}"].text == text
    assert reports[f"w-{tag}"].text == "Fără leziuni" and reports[f"w-{tag}"].notes


async def test_wrong_credentials_are_a_401_error(sekmet, http):
    client = FhirClient(fhir_server(sekmet.url).__class__(url=sekmet.url, username="xrv",
                                                          password="wrong"), http)
    with pytest.raises(FhirHTTPError) as caught:
        await client.find_patients(identifier="1")
    assert caught.value.status == 401


async def test_unknown_resource_is_404_with_operation_outcome(sekmet, sekmet_client):
    with pytest.raises(FhirHTTPError) as caught:
        await sekmet_client.get("Patient/does-not-exist")
    assert caught.value.status == 404 and "HTTP 404" in str(caught.value)


# --- faults from a stub ----------------------------------------------------------------


def outcome(text: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]}


def bundle(entries: list[dict], next_url: str = "") -> dict:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in entries]}


class Script:
    """Answers in order; the last answer repeats. Each answer: (status, body, headers)."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.seen: list[web.Request] = []
        self.auth: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.auth.append(request.headers.get("Authorization", ""))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            return await answer(request)
        status, body, headers = answer
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, headers=headers,
                            content_type="application/fhir+json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        return app


async def stub_client(url, http, **kw):
    return FhirClient(fhir_server(url + "/fhir", timeout=kw.pop("timeout", 5),
                                  max_attempts=kw.pop("max_attempts", 3)), http,
                      backoff=0.01, **kw)


async def test_basic_credentials_are_sent(http):
    script = Script((200, bundle([]), {}))
    async with serving(script.app()) as url:
        client = await stub_client(url, http)
        await client.find_patients(identifier="1")
    expected = "Basic " + base64.b64encode(b"xrv:fhir-secret").decode()
    assert script.auth == [expected]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried_and_carry_the_outcome(http, status):
    script = Script((status, outcome("identifier system unknown"), {}))
    async with serving(script.app()) as url:
        client = await stub_client(url, http)
        with pytest.raises(FhirHTTPError) as caught:
            await client.find_patients(identifier="1")
    assert caught.value.status == status
    assert caught.value.outcome == "identifier system unknown"
    assert f"HTTP {status}: identifier system unknown" in str(caught.value)
    assert len(script.seen) == 1


async def test_429_honours_retry_after_then_succeeds(http):
    slept: list[float] = []

    async def sleep(seconds):
        slept.append(seconds)

    script = Script((429, outcome("slow down"), {"Retry-After": "2"}),
                    (200, bundle([{"resourceType": "Patient", "id": "p"}]), {}))
    async with serving(script.app()) as url:
        client = FhirClient(fhir_server(url + "/fhir", max_attempts=3), http, backoff=0.01,
                            sleep=sleep)
        found = await client.find_patients(identifier="1")
    assert [p["id"] for p in found] == ["p"]
    assert slept == [2.0] and len(script.seen) == 2


async def test_500_is_retried_with_bounded_attempts(http):
    before = metrics.FHIR_REQUESTS.labels("Patient", "unavailable")._value.get()
    script = Script((500, outcome("database locked"), {}))
    async with serving(script.app()) as url:
        client = await stub_client(url, http, max_attempts=3)
        with pytest.raises(FhirUnavailable) as caught:
            await client.find_patients(identifier="1")
    assert len(script.seen) == 3
    assert caught.value.status == 500 and "database locked" in str(caught.value)
    assert metrics.FHIR_REQUESTS.labels("Patient", "unavailable")._value.get() == before + 1


async def test_slow_answers_time_out_and_are_retried(http):
    async def slow(request):
        await asyncio.sleep(2)
        return web.json_response(bundle([]))

    script = Script(slow)
    async with serving(script.app()) as url:
        client = await stub_client(url, http, timeout=0.3, max_attempts=2)
        with pytest.raises(FhirUnavailable, match="timed out"):
            await client.find_patients(identifier="1")
    assert len(script.seen) == 2


async def test_connection_refused_is_unavailable(http):
    from support.pgserver import free_port
    client = await stub_client(f"http://127.0.0.1:{free_port()}", http, max_attempts=2)
    with pytest.raises(FhirUnavailable, match="connection failed") as caught:
        await client.find_patients(identifier="1")
    assert caught.value.status is None


async def test_a_next_link_that_loops_is_refused(http):
    holder = {}

    async def page(request):
        return web.json_response(bundle([{"resourceType": "DiagnosticReport", "id": "r"}],
                                        holder["url"] + "/fhir/DiagnosticReport?page=2"))

    script = Script(page)
    async with serving(script.app()) as url:
        holder["url"] = url
        client = await stub_client(url, http)
        with pytest.raises(FhirBadResponse, match="loops"):
            await client.diagnostic_reports(patient_id="p")
    assert len(script.seen) == 2  # first page, then page 2 whose next link is itself


async def test_a_next_link_to_another_server_is_refused(http):
    script = Script((200, bundle([], "http://elsewhere.example/fhir/x?page=2"), {}))
    async with serving(script.app()) as url:
        client = await stub_client(url, http)
        with pytest.raises(FhirBadResponse, match="leaves the server"):
            await client.diagnostic_reports(patient_id="p")
    assert len(script.seen) == 1


async def test_endless_paging_stops_at_max_pages(http):
    holder = {"n": 0}

    async def page(request):
        holder["n"] += 1
        return web.json_response(bundle([], f"{holder['url']}/fhir/X?page={holder['n']}"))

    script = Script(page)
    async with serving(script.app()) as url:
        holder["url"] = url
        client = await stub_client(url, http, max_pages=4)
        with pytest.raises(FhirBadResponse, match="more than 4 pages"):
            await client.diagnostic_reports(patient_id="p")


@pytest.mark.parametrize("body", [
    "<html>not json</html>",
    {"resourceType": "Patient", "id": "x"},                # not a Bundle
    {"resourceType": "Bundle", "entry": {"not": "a list"}},
    {"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]},  # entry without resource
    {"no": "resourceType"},
])
async def test_malformed_bundles_are_bad_responses(http, body):
    script = Script((200, body, {}))
    async with serving(script.app()) as url:
        client = await stub_client(url, http)
        with pytest.raises(FhirBadResponse):
            await client.diagnostic_reports(patient_id="p")
    assert len(script.seen) == 1


def test_helpers():
    assert operation_outcome_text(outcome("a")) == "a"
    assert operation_outcome_text({"resourceType": "Patient"}) == ""
    assert retry_after("5") == 5.0
    assert retry_after("Wed, 25 Nov 2026 10:00:10 GMT", now=1795600800.0) == pytest.approx(10.0)
    assert retry_after("soon") is None and retry_after(None) is None
