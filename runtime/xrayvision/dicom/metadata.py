"""What an instance tells us. Pure: no I/O, and no
pixel data is read, so it is cheap enough for the association thread."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.dicom.regions import identify_region
from xrayvision.images import InvalidUID, validate_uid


class BadInstance(ValueError):
    """The dataset lacks what an exam needs (the message says what)."""


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit]


def _date(value: object) -> dt.date | None:
    if not value:
        return None
    try:
        parsed = DA(value) if not isinstance(value, dt.date) else value
    except (ValueError, TypeError):
        return None
    return parsed if isinstance(parsed, dt.date) else None


def _when(ds: Dataset, tz: dt.tzinfo) -> dt.datetime | None:
    """Series date/time (else study, acquisition, content), local time of ``tz`` unless
    the file states its UTC offset."""
    for date_kw, time_kw in (("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"),
                             ("AcquisitionDate", "AcquisitionTime"),
                             ("ContentDate", "ContentTime")):
        day = _date(ds.get(date_kw))
        if day is None:
            continue
        clock = dt.time()
        raw_time = ds.get(time_kw)
        if raw_time:
            try:
                parsed = TM(raw_time)
                if isinstance(parsed, dt.time):
                    clock = parsed
            except (ValueError, TypeError):
                pass
        zone = tz
        offset = _text(ds, "TimezoneOffsetFromUTC")
        if offset:
            with contextlib.suppress(ValueError, TypeError):
                zone = DT(f"20000101{offset}").tzinfo or tz
        return dt.datetime.combine(day, clock.replace(tzinfo=None), tzinfo=zone).astimezone(dt.UTC)
    return None


UNKNOWN_REGION = "unknown"


def _projection(ds: Dataset) -> str:
    """View Position, else the View Code Sequence's meaning; "" when neither says (Patient
    Orientation, e.g. ``L\\F``, gives the image's axes, not the view)."""
    view = _text(ds, "ViewPosition", 64)
    if view:
        return view
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = _text(item, "CodeMeaning", 64)
        if meaning:
            return meaning
    return ""


def _sex(value: str) -> str:
    value = value.upper()[:1]
    return value if value in ("M", "F", "O") else ""


def extract(ds: Dataset, *, regions: Mapping, calling_aet: str = "", priority: int = 0,
            tz: dt.tzinfo | None = None,
            read_untagged: bool = False) -> tuple[ExamInfo, PatientInfo | None]:
    """Exam and patient fields from ``ds``; raises BadInstance without a valid SOP
    Instance UID. The region is classified here (status stays ``none`` until the
    conversion worker has made the PNG): the first rule a text matches; with
    ``read_untagged``, :data:`UNKNOWN_REGION` when there is no text at all to match
    (anonymised or untagged images: read with a generic prompt, not silently ignored).
    Texts that match no rule leave the region empty (``ignore``)."""
    try:
        uid = validate_uid(_text(ds, "SOPInstanceUID", 80))
    except InvalidUID as exc:
        raise BadInstance(f"SOP Instance UID missing or invalid ({exc})") from None
    tz = tz or dt.datetime.now().astimezone().tzinfo or dt.UTC
    body_part = _text(ds, "BodyPartExamined", 64)
    protocol = _text(ds, "ProtocolName")
    study_desc = _text(ds, "StudyDescription")
    series_desc = _text(ds, "SeriesDescription")
    texts = (body_part, protocol, series_desc, study_desc)
    exam = ExamInfo(
        uid=uid,
        study_uid=_text(ds, "StudyInstanceUID", 64),
        series_uid=_text(ds, "SeriesInstanceUID", 64),
        accession=_text(ds, "AccessionNumber", 64),
        modality=_text(ds, "Modality", 16),
        sop_class=_text(ds, "SOPClassUID", 64),
        patient_name=_text(ds, "PatientName", 256),
        region=(identify_region(regions, texts) or
                (UNKNOWN_REGION if read_untagged and not any(texts) else "")),
        projection=_projection(ds),
        protocol=protocol,
        body_part=body_part,
        study_description=study_desc,
        series_description=series_desc,
        series_datetime=_when(ds, tz),
        calling_aet=calling_aet[:16],
        priority=priority,
        status="none",
    )
    cnp = _text(ds, "PatientID", 64)
    patient = None
    if cnp:
        patient = PatientInfo(
            cnp=cnp,
            name=_text(ds, "PatientName").replace("^", " ").strip(),
            birth_date=_date(ds.get("PatientBirthDate")),
            sex=_sex(_text(ds, "PatientSex", 16)),
        )
    return exam, patient
