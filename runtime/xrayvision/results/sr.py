"""An AI read as DICOM Structured Reports (pure: a :class:`~xrayvision.db.repo.ReadDocument`
in, pydicom datasets out), made with highdicom after IHE AI Results (AIR):

- a **Comprehensive 3D SR** with TID 1500 "Imaging Measurement Report" as root: one
  measurement group (TID 1501) for the study, referencing the images read, with a
  qualitative evaluation "Clinical finding: Present/Absent" (SNOMED CT), the severity
  0-10 and the confidence as measurements (private codes: no standard concept exists;
  docs/pacs.md), the algorithm (TID 4019: model, served model, endpoint, our version)
  and the device observer;
- a **Comprehensive SR** with the report in words (TID 2000-like: Findings and
  Impressions sections, a comment saying it is an AI read and not a diagnosis): TID 1500
  has no place for free text in its qualitative evaluations as highdicom builds them, and
  a text SR is what PACS viewers without TID 1500 support show (docs/results.md).

Both are ``VerificationFlag UNVERIFIED``, ``PreliminaryFlag PRELIMINARY``, in one series
of ours in the original study; the algorithm is named in the Contributing Equipment
Sequence with purpose (99IHE, 1630, "Processing Algorithm"). Their UIDs are derived from
the read (key, version, review) under ``[results] uid_root``: a retry sends the same
instances, and a later version or a review is new instances that name the earlier ones in
the Predecessor Documents Sequence (supersession; the PACS keeps both).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import highdicom as hd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DA, TM

from xrayvision import __version__
from xrayvision.db.repo import ImageRef, ReadDocument

MANUFACTURER = "XRayVision"
# Our coding scheme for what no standard code names (declared in each SR's Coding
# Scheme Identification Sequence and in docs/pacs.md).
PRIVATE_SCHEME = "99XRV"
SEVERITY = hd.sr.CodedConcept("SEV", PRIVATE_SCHEME, "AI severity score")
CONFIDENCE = hd.sr.CodedConcept("CONF", PRIVATE_SCHEME, "AI confidence")
SCORE = hd.sr.CodedConcept("{score}", "UCUM", "score")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
FINDING = hd.sr.CodedConcept("404684003", "SCT", "Clinical finding")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
RADIOGRAPHY = hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
PROCESSING_ALGORITHM = hd.sr.CodedConcept("1630", "99IHE", "Processing Algorithm")
REPORT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
FINDINGS_SECTION = hd.sr.CodedConcept("121070", "DCM", "Findings")
FINDING_TEXT = hd.sr.CodedConcept("121071", "DCM", "Finding")
IMPRESSIONS_SECTION = hd.sr.CodedConcept("121072", "DCM", "Impressions")
IMPRESSION_TEXT = hd.sr.CodedConcept("121073", "DCM", "Impression")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
SERIES_NUMBER = 9901  # high, as derived series usually are: after the acquisition's
SERIES_DESCRIPTION = "AI read (XRayVision) - not a diagnosis"
DISCLAIMER = ("AI-generated preliminary read (XRayVision); not verified by a radiologist, "
              "not a diagnosis.")
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")


@dataclass(frozen=True)
class SrUids:
    """The UIDs of one result's instances."""

    series: str
    measurements: str
    text: str
    sc_series: str  # the Secondary Capture's (results/sc.py)
    sc: str


def sr_uids(root: str, key: str, version: int, review: int = 0) -> SrUids:
    """Derived from the read, so every try of the same result makes the same instances;
    the series is the read's (every version and review of it in one series)."""
    def uid(*parts: object) -> str:
        return str(generate_uid(prefix=root, entropy_srcs=["xrayvision", *map(str, parts)]))

    return SrUids(uid(key, "series"), uid(key, version, review, "tid1500"),
                  uid(key, version, review, "text"), uid(key, "sc"),
                  uid(key, version, review, "sc"))


def instance_number(doc: ReadDocument) -> int:
    """The first Instance Number of a result's instances: later versions and reviews
    number after earlier ones (version x 1000, two per review)."""
    return doc.version * 1000 + min(doc.review, 499) * 2 + 1


def person_name(name: str) -> str:
    """The name as the images carried it (PN); a display name of ours ("Ion Popescu",
    from the HIS, for images recorded before we kept the PN) as one component."""
    name = name.strip()
    return name if "^" in name or not name else f"{name}^"


def _source(doc: ReadDocument, image: ImageRef) -> Dataset:
    """What the SR copies from the images it references (patient, study), from what we
    recorded of them: the received DICOM is not kept."""
    ds = Dataset()
    ds.SOPClassUID = image.sop_class or CR_IMAGE
    ds.SOPInstanceUID = image.uid
    ds.SeriesInstanceUID = image.series_uid or generate_uid()
    ds.StudyInstanceUID = doc.study_uid
    ds.Modality = image.modality or "CR"
    ds.PatientID = doc.patient_id
    ds.PatientName = person_name(doc.patient_name)
    ds.PatientBirthDate = doc.birth_date.strftime("%Y%m%d") if doc.birth_date else ""
    ds.PatientSex = doc.sex if doc.sex in ("M", "F", "O") else ""
    when = doc.study_datetime
    ds.StudyDate = when.strftime("%Y%m%d") if when else ""
    ds.StudyTime = when.strftime("%H%M%S") if when else ""
    ds.AccessionNumber = doc.accession
    ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    return ds


def _predecessor(study_uid: str, series_uid: str, sop_class: str, uid: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    return ds


@functools.cache
def _observer() -> hd.sr.ObservationContext:
    """The device observer (TID 1004): always the same, built once per process (the
    documents copy or only read it)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid(entropy_srcs=["xrayvision", "device"])),
            name="XRayVision", manufacturer_name=MANUFACTURER,
            model_name="XRayVision AI triage"))
    return hd.sr.ObservationContext(observer_device_context=device)


def _algorithm(doc: ReadDocument) -> hd.sr.AlgorithmIdentification:
    parameters = [f"endpoint={doc.endpoint or 'unknown'}"]
    if doc.prompt_version:
        parameters.append(f"prompts={doc.prompt_version}")
    return hd.sr.AlgorithmIdentification(name=(doc.model or "unknown model")[:64],
                                         version=__version__, parameters=parameters)


def _equipment(doc: ReadDocument) -> hd.ContributingEquipment:
    """The algorithm as contributing equipment. IHE AIR names its purpose (99IHE, 1630);
    highdicom accepts only CID 7005's codes, so the item is built as "Processing
    Equipment" and its purpose then set to AIR's."""
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=(doc.model or "unknown model")[:64],
        software_versions=[__version__], contribution_datetime=doc.read_at,
        contribution_description=f"AI read by {doc.model or 'a model'} on the "
                                 f"{doc.endpoint or 'unknown'} endpoint"[:64])
    equipment.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    return equipment


def _measurement_content(doc: ReadDocument, evidence: Sequence[Dataset]
                         ) -> hd.sr.MeasurementReport:
    measurements = []
    if doc.severity >= 0:
        measurements.append(hd.sr.Measurement(name=SEVERITY, value=float(doc.severity),
                                              unit=SCORE, algorithm_id=_algorithm(doc)))
    if doc.confidence >= 0:
        measurements.append(hd.sr.Measurement(name=CONFIDENCE, value=float(doc.confidence),
                                              unit=PERCENT, algorithm_id=_algorithm(doc)))
    evaluations = []
    if doc.positive in (0, 1):
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=FINDING, value=PRESENT if doc.positive == 1 else ABSENT))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(generate_uid(entropy_srcs=["xrayvision", doc.key, "tracking"])),
            identifier=f"AI read v{doc.version}"),
        algorithm_id=_algorithm(doc),
        measurements=measurements or None, qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID) for ds in evidence])
    return hd.sr.MeasurementReport(observation_context=_observer(),
                                   procedure_reported=RADIOGRAPHY,
                                   imaging_measurements=[group])


def review_sentence(doc: ReadDocument) -> str:
    """The review the result carries, in words ("" for none): the SR's comment and the
    FHIR resources' note."""
    if doc.review_correct is None:
        return ""
    verdict = "agreed with" if doc.review_correct else "disagreed with"
    when = doc.reviewed_at.strftime(" on %Y-%m-%d %H:%M UTC") if doc.reviewed_at else ""
    line = f"Review: {doc.reviewed_by or 'a radiologist'} {verdict} this AI read{when}."
    return f"{line} {doc.review_note}" if doc.review_note else line


def _text_content(doc: ReadDocument, findings: str, impression: str) -> Dataset:
    root = hd.sr.ContainerContentItem(name=REPORT, template_id="2000")
    items: list[hd.sr.ContentItem] = list(_observer())  # type: ignore[arg-type]
    comment = DISCLAIMER
    if doc.severity >= 0:
        comment += f" Severity {doc.severity}/10"
        comment += f", confidence {doc.confidence}%." if doc.confidence >= 0 else "."
    review = review_sentence(doc)
    for text in (comment, review):
        if text:
            items.append(hd.sr.TextContentItem(name=COMMENT, value=text[:10000],
                                               relationship_type="CONTAINS"))
    for section, item, text in ((FINDINGS_SECTION, FINDING_TEXT, findings),
                                (IMPRESSIONS_SECTION, IMPRESSION_TEXT, impression)):
        if not text.strip():
            continue
        container = hd.sr.ContainerContentItem(name=section, relationship_type="CONTAINS")
        container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
            name=item, value=text.strip()[:10000], relationship_type="CONTAINS")])
        items.append(container)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


# The root content item's attributes, which an SR carries at its top level.
_ROOT_ITEM = ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent",
              "ContentTemplateSequence", "ContentSequence")


def _text_sr(measurement: Dataset, doc: ReadDocument, uids: SrUids, findings: str,
             impression: str, previous: Sequence[SrUids]) -> Dataset:
    """The text SR: the measurement SR's document (patient, study, series, evidence,
    equipment, flags: the same for both) with the report's words as content. Derived
    rather than built by highdicom again: its document constructor is most of the cost
    of a read's SRs (bench/README.md), and would only repeat the same header."""
    text = _elements_copy(measurement, Dataset())
    text.file_meta = _elements_copy(measurement.file_meta, FileMetaDataset())
    text.SOPClassUID = text.file_meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    text.SOPInstanceUID = text.file_meta.MediaStorageSOPInstanceUID = UID(uids.text)
    text.InstanceNumber = int(measurement.InstanceNumber) + 1
    root = _text_content(doc, findings, impression)
    for keyword in _ROOT_ITEM:
        if keyword in text:
            delattr(text, keyword)
        if keyword in root:
            setattr(text, keyword, root[keyword].value)
    if previous:
        text.PredecessorDocumentsSequence = _predecessors(
            doc.study_uid, [(p.series, COMPREHENSIVE_SR, p.text) for p in previous])
    return text


_D = TypeVar("_D", bound=Dataset)


def _elements_copy(source: Dataset, target: _D) -> _D:
    """``target`` with a copy of each of ``source``'s top-level elements (values shared:
    what is replaced is replaced whole, so ``source`` never changes)."""
    for element in source:
        target.add(copy.copy(element))
    return target


def _predecessors(study_uid: str, instances: Sequence[tuple[str, str, str]]) -> list[Dataset]:
    """The Predecessor Documents Sequence of (series, SOP class, SOP instance) items."""
    item = Dataset()
    item.StudyInstanceUID = study_uid
    by_series: dict[str, list[Dataset]] = {}
    for series, sop_class, uid in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = uid
        by_series.setdefault(series, []).append(ref)
    item.ReferencedSeriesSequence = []
    for series, refs in by_series.items():
        entry = Dataset()
        entry.SeriesInstanceUID = series
        entry.ReferencedSOPSequence = refs
        item.ReferencedSeriesSequence.append(entry)
    return [item]


def build_srs(doc: ReadDocument, *, uid_root: str, findings: str, impression: str,
              previous: Sequence[SrUids] = ()) -> list[Dataset]:
    """The measurement SR and the text SR of ``doc`` (``previous``: the instances of
    this read sent before, which these supersede)."""
    uids = sr_uids(uid_root, doc.key, doc.version, doc.review)
    evidence = [_source(doc, image) for image in doc.images]
    measurement = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=_measurement_content(doc, evidence),
        series_instance_uid=uids.series, series_number=SERIES_NUMBER,
        sop_instance_uid=uids.measurements, instance_number=instance_number(doc),
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        contributing_equipment=[_equipment(doc)],
        previous_versions=[_predecessor(doc.study_uid, p.series, COMPREHENSIVE_3D_SR,
                                        p.measurements) for p in previous] or None)
    measurement.SeriesDescription = SERIES_DESCRIPTION
    measurement.ContentDate = DA(doc.read_at.strftime("%Y%m%d"))
    measurement.ContentTime = TM(doc.read_at.strftime("%H%M%S"))
    schemes = list(measurement.get("CodingSchemeIdentificationSequence", []))
    measurement.CodingSchemeIdentificationSequence = [*schemes, _private_scheme()]
    return [measurement, _text_sr(measurement, doc, uids, findings, impression, previous)]


def _private_scheme() -> Dataset:
    ds = Dataset()
    ds.CodingSchemeDesignator = PRIVATE_SCHEME
    ds.CodingSchemeName = "XRayVision AI read measures"
    ds.CodingSchemeResponsibleOrganization = "XRayVision project"
    return ds
