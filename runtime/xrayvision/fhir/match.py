"""Which exams a radiologist's DiagnosticReport belongs to (pure: no I/O).

An exam is one image (SOP instance); a report covers a study, so a match links every
exam of one study (same study instance UID, else same accession number). The first rule
that applies decides:

1. **Identifiers on the report**: an accession number (identifier type ``ACSN``) or a
   study instance UID (system ``urn:dicom:uid``) equal to the exam's.
2. **The ImagingStudy it reports on** (``DiagnosticReport.imagingStudy``): its study
   instance UID and accession number, as in 1.
3. **The ServiceRequests it is based on**: their accession numbers / study UIDs, as in 1.
4. **Date window and region**, only when neither the report nor its links carry such
   identifiers, and only when the report's code or text names a region or a radiograph
   (a report naming neither is about something else: a laboratory result): exams of the
   patient taken at most ``window`` before the report's time (and not more than an hour
   after it, for clock skew), in the region it names (any region when it names only a
   radiograph), not already linked to another report.

A report whose identifiers (1 to 3) name no exam of ours is not matched by date: it is
about another study. When the exams found belong to more than one study, the match is
**ambiguous** and nothing is linked; the caller logs, counts and lists it with the
``reason``. When several reports match one exam, an identifier match (1 to 3) always
beats a date match (:attr:`Match.rank`), whatever their times; within a rank the later
report wins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from xrayvision.db.repo import PollExam
from xrayvision.fhir.resources import FhirReport, Identifiers

CLOCK_SKEW = dt.timedelta(hours=1)


RANKS = {"identifier": 2, "imaging_study": 2, "service_request": 2, "date_region": 1}


@dataclass(frozen=True)
class Match:
    rule: str  # identifier, imaging_study, service_request, date_region, none, ambiguous
    uids: tuple[str, ...] = ()
    reason: str = ""  # why nothing is linked (none, ambiguous), in words

    @property
    def linked(self) -> bool:
        return self.rule not in ("none", "ambiguous")

    @property
    def rank(self) -> int:
        """How sure the rule is: an identifier match outranks a date match."""
        return RANKS.get(self.rule, 0)


def study_key(exam: PollExam) -> str:
    return exam.study_uid or exam.accession or exam.uid


def _by_identifiers(ids: Identifiers, exams: Iterable[PollExam]) -> list[PollExam]:
    return [e for e in exams
            if (e.accession and e.accession in ids.accessions)
            or (e.study_uid and e.study_uid in ids.study_uids)]


def _decide(rule: str, found: list[PollExam], nothing: str) -> Match:
    studies = {study_key(e) for e in found}
    if not studies:
        return Match("none", reason=nothing)
    uids = tuple(sorted(e.uid for e in found))
    if len(studies) > 1:
        return Match("ambiguous", uids, f"it fits exams of {len(studies)} studies")
    return Match(rule, uids)


def match_report(report: FhirReport, exams: list[PollExam],
                 requests: Mapping[str, Identifiers], *, window: dt.timedelta,
                 region: str = "", imaging: bool = False) -> Match:
    """The exams ``report`` belongs to among one patient's ``exams``; ``requests`` maps
    ``ServiceRequest/<id>`` and ``ImagingStudy/<id>`` to their identifiers; ``region``
    is the region the report's code or text names ("" when none), ``imaging`` whether it
    names a radiograph."""
    if report.identifiers:
        return _decide("identifier", _by_identifiers(report.identifiers, exams),
                       "its accession number or study UID names no exam of the patient")
    studied = report.imaging_identifiers
    for ref in report.imaging_studies:
        studied = studied | requests.get(ref, Identifiers())
    if studied:
        return _decide("imaging_study", _by_identifiers(studied, exams),
                       "its ImagingStudy's study UID or accession number names no exam of "
                       "the patient")
    from_requests = Identifiers()
    for ref in report.based_on:
        from_requests = from_requests | requests.get(ref, Identifiers())
    if from_requests:
        return _decide("service_request", _by_identifiers(from_requests, exams),
                       "its order's accession number or study UID names no exam of the "
                       "patient")
    if report.when is None:
        return Match("none", reason="no accession number, study UID or date")
    if not region and not imaging:
        return Match("none", reason="no accession number or study UID, and its code and "
                                    "text name no region or radiograph")
    found = [
        e for e in exams
        if e.when is not None
        and e.when - CLOCK_SKEW <= report.when <= e.when + window
        and (not region or e.region == region)
        and (not e.rad_fhir_id or e.rad_fhir_id == report.fhir_id)
    ]
    return _decide("date_region", found, "no exam of the patient "
                   + (f"in region {region} " if region else "") + "in its date window")
