"""The AI read as FHIR resources (pure builders), valid R4 (fhir.resources R4B)."""

from __future__ import annotations

from support.fhirpeer import validated
from xrayvision.db import repo
from xrayvision.fhir.resources import is_ours
from xrayvision.results.fhir_resources import diagnostic_report, observation, subject

from .conftest import record_read


def test_with_the_sr_and_without_scores(db):
    key = record_read(db, ())
    doc = db.read_sync(repo.read_document, key, 1, 0)
    patient = subject(doc, None, "urn:ro:cnp")
    assert patient == {"type": "Patient",
                       "identifier": {"system": "urn:ro:cnp", "value": "9RG1"}}
    obs = validated(observation(doc, patient, "1.2.3.4"))
    assert [d["type"] for d in obs["derivedFrom"]] == ["ImagingStudy", "DocumentReference"]
    assert obs["derivedFrom"][1]["identifier"]["value"] == "urn:oid:1.2.3.4"
    assert {i["system"] for i in obs["identifier"]} == {"urn:xrayvision:ai-read",
                                                         "urn:dicom:uid"}
    assert is_ours(obs)
    unscored = record_read(db, (), positive=-1, severity=-1, confidence=-1)
    doc = db.read_sync(repo.read_document, unscored, 2, 0)
    obs = validated(observation(doc, patient))
    assert "valueInteger" not in obs and obs["dataAbsentReason"]["coding"][0]["code"] == \
        "unknown"
    assert "interpretation" not in obs and "component" not in obs
    report = validated(diagnostic_report(doc, patient, "obs-1", impression=""))
    assert report["status"] == "preliminary" and "conclusion" in report  # (the summary)
