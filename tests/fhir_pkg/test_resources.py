import base64
import datetime as dt

from xrayvision.config import IMAGING_CATEGORIES
from xrayvision.fhir.resources import (
    Identifiers,
    attachment_text,
    html_to_text,
    is_imaging,
    names_imaging,
    parse_datetime,
    patient_ids,
    patient_of,
    report_of,
)

ROMANIAN = "Opacitate în baza dreaptă; sinusuri libere. Cord în limite normale. ă â î ș ț Ă Â Î Ș Ț"


def form(text: str | bytes, content_type: str, encoding: str = "utf-8") -> dict:
    raw = text if isinstance(text, bytes) else text.encode(encoding)
    return {"contentType": content_type, "data": base64.b64encode(raw).decode()}


def test_plain_text_round_trips_romanian_diacritics():
    text, note = attachment_text(form(ROMANIAN, "text/plain; charset=utf-8"))
    assert text == ROMANIAN and note == ""


def test_declared_latin2_charset_is_used():
    text, note = attachment_text(form("Opacitate în bază", "text/plain; charset=ISO-8859-2",
                                      "iso-8859-2"))
    assert text == "Opacitate în bază" and note == ""


def test_undeclared_windows_1250_falls_back_with_a_note():
    raw = "Fără leziuni, sinusuri libere".encode("windows-1250")
    text, note = attachment_text(form(raw, "text/plain"))
    assert text == "Fără leziuni, sinusuri libere"
    assert "windows-1250" in note


def test_html_is_reduced_to_text():
    markup = ("<html><head><title>x</title><style>p{}</style></head><body>"
              "<h2>Rezultat</h2><p>Opacitate &icirc;n baza <b>dreaptă</b>.</p>"
              "<script>alert(1)</script><ul><li>unu</li><li>doi &amp; trei</li></ul></body></html>")
    text, _ = attachment_text(form(markup, "text/html; charset=utf-8"))
    assert text == "Rezultat\n\nOpacitate în baza dreaptă.\n\nunu\n\ndoi & trei"
    assert "alert" not in text and "<" not in html_to_text("<p>a &lt;b&gt;</p>").replace(
        "<b>", "")


def test_other_types_and_url_only_and_bad_base64_are_skipped_with_notes():
    assert attachment_text(form(b"%PDF-1.4", "application/pdf")) == (
        "", "application/pdf attachment skipped")
    text, note = attachment_text({"contentType": "text/plain", "url": "http://his/r/1"})
    assert text == "" and "without inline data" in note
    text, note = attachment_text({"contentType": "text/plain", "data": "!!not base64!!"})
    assert text == "" and "invalid base64" in note


def test_report_of_reads_text_conclusion_radiologist_identifiers():
    resource = {
        "resourceType": "DiagnosticReport", "id": "r1", "status": "amended",
        "meta": {"versionId": "3"},
        "code": {"text": "Rx torace", "coding": [{"display": "Chest X-ray"}]},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2026-11-20T10:00:00+02:00"},
        "identifier": [
            {"type": {"coding": [{"code": "ACSN"}]}, "value": "ACC9"},
            {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"},
            {"system": "urn:other", "value": "ignored"},
        ],
        "basedOn": [{"reference": "ServiceRequest/s1"}, {"reference": "CarePlan/c1"}],
        "performer": [{"display": "Spitalul X"}],
        "resultsInterpreter": [{"reference": "Practitioner/x"}, {"display": "Dr. Ionescu"}],
        "presentedForm": [form(ROMANIAN, "text/plain"), form(b"%PDF", "application/pdf")],
        "conclusion": "Pneumonie bazală dreaptă",
    }
    report = report_of(resource)
    assert report.fhir_id == "r1" and report.version == "3" and report.status == "amended"
    assert report.text == ROMANIAN + "\n\nPneumonie bazală dreaptă"
    assert report.radiologist == "Dr. Ionescu"
    assert report.when == dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.UTC)
    assert report.identifiers == Identifiers(frozenset({"ACC9"}), frozenset({"1.2.3.4"}))
    assert report.based_on == ("ServiceRequest/s1",)
    assert report.description == "Rx torace Chest X-ray"
    assert report.notes == ("application/pdf attachment skipped",)


def test_report_without_forms_uses_conclusion_and_performer():
    report = report_of({"resourceType": "DiagnosticReport", "id": "r2", "status": "final",
                        "issued": "2026-11-21T09:30:00Z", "conclusion": "Normal",
                        "performer": [{"display": "Dr. Pop"}]})
    assert report.text == "Normal" and report.radiologist == "Dr. Pop"
    assert report.when == dt.datetime(2026, 11, 21, 9, 30, tzinfo=dt.UTC)
    assert not report.identifiers and report.version == ""


def test_conclusion_already_in_text_is_not_repeated():
    resource = {"resourceType": "DiagnosticReport", "id": "r3", "status": "final",
                "presentedForm": [form("Concluzie: normal", "text/plain")],
                "conclusion": "normal"}
    assert report_of(resource).text == "Concluzie: normal"


def test_patient_of():
    resource = {"resourceType": "Patient", "id": "p1",
                "identifier": [{"system": "urn:mrn", "value": "M1"},
                               {"system": "urn:ro:cnp", "value": "1800101123456"}],
                "name": [{"family": "Popescu", "given": ["Ion", "Vasile"]}],
                "birthDate": "1980-01-01", "gender": "male"}
    p = patient_of(resource, "urn:ro:cnp")
    assert (p.fhir_id, p.cnp, p.name, p.birth_date, p.sex) == (
        "p1", "1800101123456", "Popescu^Ion Vasile", dt.date(1980, 1, 1), "M")
    assert patient_of(resource).cnp == "M1"  # no system configured: the first
    assert patient_of({"resourceType": "Patient", "gender": "unknown"}).sex == ""


def test_parse_datetime_forms():
    assert parse_datetime("2026") == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_datetime("2026-11") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert parse_datetime("2026-11-20") == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    assert parse_datetime("2026-11-20T10:00:00") == dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)
    assert parse_datetime("garbage") is None and parse_datetime(None) is None


RAD = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}


def test_imaging_reports_by_category_and_code():
    rad = {"category": [RAD], "code": {"coding": [{"system": "http://loinc.org",
                                                   "code": "36643-5"}]}}
    lab = {"category": [LAB], "code": {"coding": [{"system": "http://loinc.org",
                                                   "code": "58410-2"}]}}
    uncategorised = {"code": {"text": "Rx torace"}}
    assert is_imaging(rad, IMAGING_CATEGORIES, ())
    assert not is_imaging(lab, IMAGING_CATEGORIES, ())
    assert not is_imaging(uncategorised, IMAGING_CATEGORIES, ())
    assert is_imaging(uncategorised, (), ())  # no filter: any
    # codes as a HIS lists them: with a system, or the code alone
    assert is_imaging(rad, (), ("http://loinc.org|36643-5",))
    assert is_imaging(rad, (), ("36643-5",))
    assert not is_imaging(lab, (), ("http://loinc.org|36643-5", "30746-2"))
    assert not is_imaging(rad, IMAGING_CATEGORIES, ("http://loinc.org|30746-2",))  # both


def test_radiographs_named_in_romanian_and_english():
    for text in ("Rx torace PA", "Radiografie pulmonară", "Chest X-ray", "XRAY knee",
                 "Examen radiologic", "Röntgen Thorax"):
        assert names_imaging(text), text
    for text in ("Hemoleucogramă completă", "Glicemie", "crx-12 marker", ""):
        assert not names_imaging(text), text


def test_patient_ids_in_a_system_or_all():
    resource = {"identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"},
                               {"system": "urn:ro:cnp", "value": "1800101123456"}]}
    assert patient_ids(resource, "urn:ro:cnp") == {"1800101123456"}
    assert patient_ids(resource, "") == {"MRN-1", "1800101123456"}
    assert patient_ids(resource, "urn:other") == frozenset()
