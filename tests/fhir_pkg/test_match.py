import dataclasses
import datetime as dt

from xrayvision.db.repo import PollExam
from xrayvision.fhir.match import match_report
from xrayvision.fhir.resources import FhirReport, Identifiers

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)


def exam(uid, study="", accession="", region="chest", when=T0, linked=""):
    return PollExam(uid=uid, cnp="1", study_uid=study, accession=accession, region=region,
                    when=when, rad_fhir_id=linked, has_report=bool(linked))


def report(fhir_id="r1", when=T0 + dt.timedelta(hours=3), accessions=(), uids=(),
           based_on=()):
    return FhirReport(fhir_id=fhir_id, version="1", status="final", text="t", radiologist="",
                      when=when, identifiers=Identifiers(frozenset(accessions), frozenset(uids)),
                      based_on=tuple(based_on), subject="Patient/p", description="")


EXAMS = [exam("a1", "S1", "ACC1"), exam("a2", "S1", "ACC1"),  # PA + lateral of one study
         exam("b1", "S2", "ACC2", when=T0 + dt.timedelta(days=1)),
         exam("c1", "S3", "", region="knee", when=T0 + dt.timedelta(days=1))]


def test_accession_links_every_exam_of_the_study():
    m = match_report(report(accessions=["ACC1"]), EXAMS, {}, window=WEEK)
    assert (m.rule, m.uids) == ("identifier", ("a1", "a2"))


def test_study_uid_identifier():
    m = match_report(report(uids=["S2"]), EXAMS, {}, window=WEEK)
    assert (m.rule, m.uids) == ("identifier", ("b1",))


def test_identifiers_naming_another_study_do_not_fall_back_to_dates():
    m = match_report(report(accessions=["CT-77"]), EXAMS, {}, window=WEEK)
    assert m.rule == "none" and not m.linked


def test_service_request_identifiers():
    requests = {"ServiceRequest/s2": Identifiers(frozenset({"ACC2"}))}
    m = match_report(report(based_on=["ServiceRequest/s2"]), EXAMS, requests, window=WEEK)
    assert (m.rule, m.uids) == ("service_request", ("b1",))


def test_date_window_and_region():
    r = report(when=T0 + dt.timedelta(days=1, hours=2))
    m = match_report(r, EXAMS, {}, window=WEEK, region="knee")
    assert (m.rule, m.uids) == ("date_region", ("c1",))


def test_date_window_over_two_studies_is_ambiguous():
    r = report(when=T0 + dt.timedelta(days=1, hours=2))
    m = match_report(r, EXAMS, {}, window=WEEK, region="chest")
    assert m.rule == "ambiguous" and not m.linked and m.uids == ("a1", "a2", "b1")


def test_date_window_bounds_and_linked_exams():
    exams = [exam("a1", "S1"), exam("z9", "S9", when=T0 - dt.timedelta(days=30)),
             exam("y1", "S8", when=T0 + dt.timedelta(hours=1), linked="other-report")]
    m = match_report(report(when=T0 + dt.timedelta(days=2)), exams, {}, window=WEEK, imaging=True)
    assert (m.rule, m.uids) == ("date_region", ("a1",))
    # Before the exam (beyond clock skew) or after the window: nothing.
    assert match_report(report(when=T0 - dt.timedelta(hours=2)), exams[:1], {},
                        window=WEEK, imaging=True).rule == "none"
    assert match_report(report(when=T0 + dt.timedelta(days=8)), exams[:1], {},
                        window=WEEK, imaging=True).rule == "none"
    # The exam linked to this same report still matches it (a new version).
    m = match_report(report("other-report", when=T0 + dt.timedelta(hours=2)), exams[2:], {},
                     window=WEEK, imaging=True)
    assert m.uids == ("y1",)


def test_report_without_time_or_identifiers_is_not_matched():
    assert match_report(report(when=None), EXAMS, {}, window=WEEK).rule == "none"


def test_duplicate_accession_across_studies_is_ambiguous():
    exams = [exam("a1", "S1", "ACC1"), exam("x1", "S7", "ACC1")]
    assert match_report(report(accessions=["ACC1"]), exams, {}, window=WEEK).rule == "ambiguous"


def test_a_date_match_needs_a_region_or_a_radiograph_named():
    """A report with no identifiers whose code and text name neither a region nor a
    radiograph (a blood count, 15 minutes after the X-ray) is never linked by date."""
    lab = report(when=T0 + dt.timedelta(minutes=15))
    m = match_report(lab, EXAMS[:1], {}, window=WEEK)
    assert (m.rule, m.linked) == ("none", False) and "no region or radiograph" in m.reason
    assert match_report(lab, EXAMS[:1], {}, window=WEEK, imaging=True).uids == ("a1",)


def test_reasons_and_ranks():
    m = match_report(report(accessions=["CT-77"]), EXAMS, {}, window=WEEK)
    assert "names no exam" in m.reason
    ambiguous = match_report(report(accessions=["ACC1"]),
                             [exam("a1", "S1", "ACC1"), exam("x1", "S7", "ACC1")], {},
                             window=WEEK)
    assert ambiguous.reason == "it fits exams of 2 studies"
    by_id = match_report(report(accessions=["ACC1"]), EXAMS, {}, window=WEEK)
    by_date = match_report(report(), EXAMS[:1], {}, window=WEEK, region="chest")
    assert by_id.rank > by_date.rank > 0


def test_the_imaging_study_it_reports_on():
    """``DiagnosticReport.imagingStudy``: read (``requests``) or carried as a logical
    identifier; it decides before the order and the date."""
    r = dataclasses.replace(report(when=T0 + dt.timedelta(days=1, hours=2)),
                            imaging_studies=("ImagingStudy/i2",))
    studies = {"ImagingStudy/i2": Identifiers(study_uids=frozenset({"S2"}))}
    m = match_report(r, EXAMS, studies, window=WEEK, region="chest")  # by date: ambiguous
    assert (m.rule, m.uids, m.rank) == ("imaging_study", ("b1",), 2)
    inline = dataclasses.replace(report(), imaging_identifiers=Identifiers(
        accessions=frozenset({"ACC1"})))
    assert match_report(inline, EXAMS, {}, window=WEEK).uids == ("a1", "a2")
    other = dataclasses.replace(report(), imaging_identifiers=Identifiers(
        study_uids=frozenset({"S9"})))
    m = match_report(other, EXAMS, {}, window=WEEK, imaging=True)
    assert m.rule == "none" and "ImagingStudy" in m.reason  # never falls back to dates
