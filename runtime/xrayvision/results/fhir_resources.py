"""An AI read as FHIR R4 resources (pure): an ``Observation`` (the severity, whether a
finding is present, the confidence) and a preliminary ``DiagnosticReport`` (the report's
words, the impression as conclusion), after HL7's DICOM SR to FHIR mapping.

Both carry the identifier (:data:`AI_READ_SYSTEM`, the read's key): the sender writes
them by conditional update on it (``PUT Observation?identifier=...``), so a retry (or a
later version of the read) updates the same resource and never makes a second one. The
codes of the severity and confidence are ours (``urn:xrayvision:ai-measure``), as in the
SR (99XRV): no standard concept exists (docs/results.md).
"""

from __future__ import annotations

import base64
import datetime as dt

from xrayvision.db.repo import ReadDocument
from xrayvision.fhir.resources import AI_READ_SYSTEM
from xrayvision.results.sr import review_sentence

MEASURE_SYSTEM = "urn:xrayvision:ai-measure"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DICOM_UID = "urn:dicom:uid"


def _when(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat(timespec="seconds")


def _identifier(doc: ReadDocument) -> list[dict]:
    return [{"system": AI_READ_SYSTEM, "value": doc.key}]


def identifier_query(doc: ReadDocument) -> str:
    """The conditional update's search: ``identifier=system|key``."""
    return f"{AI_READ_SYSTEM}|{doc.key}"


def subject(doc: ReadDocument, patient_id: str | None, identifier_system: str) -> dict:
    """The patient: the HIS's Patient when it was found, else by identifier."""
    if patient_id:
        return {"reference": f"Patient/{patient_id}"}
    ref: dict = {"type": "Patient", "identifier": {"value": doc.patient_id}}
    if identifier_system:
        ref["identifier"]["system"] = identifier_system
    return ref


def _imaging_study(doc: ReadDocument) -> dict:
    return {"type": "ImagingStudy",
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{doc.study_uid}"},
            "display": doc.study_description or "X-ray study"}


def _device(doc: ReadDocument) -> dict:
    return {"display": f"XRayVision AI: {doc.model or 'model'} ({doc.endpoint or 'endpoint'})"}


def observation(doc: ReadDocument, patient: dict, sr_uid: str = "") -> dict:
    """The AI read's measurements as one Observation (status preliminary: unverified)."""
    resource: dict = {
        "resourceType": "Observation",
        "identifier": _identifier(doc),
        "status": "preliminary",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [{"system": MEASURE_SYSTEM, "code": "severity",
                             "display": "AI severity score (0-10)"}],
                 "text": "AI severity score (0-10), not a diagnosis"},
        "subject": patient,
        "issued": _when(doc.read_at),
        "device": _device(doc),
        "derivedFrom": [_imaging_study(doc)],
    }
    effective = _when(doc.study_datetime)
    if effective:
        resource["effectiveDateTime"] = effective
    if doc.severity >= 0:
        resource["valueInteger"] = doc.severity
    else:
        resource["dataAbsentReason"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "unknown"}]}
    if doc.positive in (0, 1):
        resource["interpretation"] = [{"coding": [{
            "system": INTERPRETATION, "code": "A" if doc.positive else "N",
            "display": "Abnormal" if doc.positive else "Normal"}]}]
    components: list[dict] = []
    if doc.positive in (0, 1):
        components.append({
            "code": {"coding": [{"system": SNOMED, "code": "404684003",
                                 "display": "Clinical finding"}]},
            "valueCodeableConcept": {"coding": [
                {"system": SNOMED, "code": "52101004", "display": "Present"} if doc.positive
                else {"system": SNOMED, "code": "2667000", "display": "Absent"}]}})
    if doc.confidence >= 0:
        components.append({
            "code": {"coding": [{"system": MEASURE_SYSTEM, "code": "confidence",
                                 "display": "AI confidence"}]},
            "valueQuantity": {"value": doc.confidence, "unit": "%", "system": UCUM,
                              "code": "%"}})
    if components:
        resource["component"] = components
    notes = [n for n in (doc.summary, review_sentence(doc)) if n]
    if notes:
        resource["note"] = [{"text": n} for n in notes]
    if sr_uid:  # the DICOM SR of the same read, in the PACS
        resource["identifier"].append({"system": DICOM_UID, "value": f"urn:oid:{sr_uid}"})
        resource["derivedFrom"].append({
            "type": "DocumentReference",
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{sr_uid}"},
            "display": "DICOM SR of this AI read"})
    return resource


def diagnostic_report(doc: ReadDocument, patient: dict, observation_id: str, *,
                      impression: str) -> dict:
    """The AI read as a preliminary DiagnosticReport: the Observation as its result, the
    impression as conclusion, the whole report as text, the order by accession."""
    text = (f"AI-generated preliminary read (XRayVision, {doc.model or 'model'}); "
            f"not verified by a radiologist, not a diagnosis.\n\n{doc.text}")
    review = review_sentence(doc)
    if review:
        text += f"\n\n{review}"
    resource: dict = {
        "resourceType": "DiagnosticReport",
        "identifier": _identifier(doc),
        "status": "preliminary",
        "category": [{"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
             "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging report"}],
                 "text": "AI read (preliminary)"},
        "subject": patient,
        "issued": _when(doc.read_at),
        "performer": [{"display": f"XRayVision AI ({doc.model or 'model'})"}],
        "result": [{"reference": f"Observation/{observation_id}"}],
        "imagingStudy": [_imaging_study(doc)],
        "conclusion": impression or doc.summary or "",
        "presentedForm": [{
            "contentType": "text/plain; charset=utf-8", "language": "en",
            "title": "AI read (preliminary, not verified)",
            "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}],
    }
    if not resource["conclusion"]:
        del resource["conclusion"]
    effective = _when(doc.study_datetime)
    if effective:
        resource["effectiveDateTime"] = effective
    if doc.accession:
        resource["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "ACSN"}]},
            "value": doc.accession}}]
    return resource
