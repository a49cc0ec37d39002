import datetime as dt

import pytest

from support.xrays import make_xray
from xrayvision.config import DEFAULT_REGIONS
from xrayvision.dicom.metadata import BadInstance, extract


def test_extract_all_fields():
    ds = make_xray(body_part="CHEST", description="Torace PA", view="PA", sex="F",
                   patient_name="Ionescu^Maria", patient_id="2800101123456")
    exam, patient = extract(ds, regions=DEFAULT_REGIONS, calling_aet="ER_CR01", priority=3,
                            tz=dt.timezone(dt.timedelta(hours=2)))
    assert exam.uid == ds.SOPInstanceUID and exam.study_uid == ds.StudyInstanceUID
    assert exam.series_uid == ds.SeriesInstanceUID and exam.accession == "ACC123"
    assert (exam.modality, exam.region, exam.projection) == ("DX", "chest", "PA")
    assert exam.body_part == "CHEST" and exam.protocol == "Torace PA"
    assert exam.study_description == exam.series_description == "Torace PA"
    assert exam.series_datetime == dt.datetime(2026, 11, 20, 8, 15, 30, tzinfo=dt.UTC)
    assert (exam.calling_aet, exam.priority, exam.status) == ("ER_CR01", 3, "none")
    assert patient.cnp == "2800101123456" and patient.name == "Ionescu Maria"
    assert patient.birth_date == dt.date(1980, 1, 1) and patient.sex == "F"


def test_utc_offset_in_the_file_wins():
    ds = make_xray()
    ds.TimezoneOffsetFromUTC = "-0500"
    exam, _ = extract(ds, regions=DEFAULT_REGIONS, tz=dt.UTC)
    assert exam.series_datetime == dt.datetime(2026, 11, 20, 15, 15, 30, tzinfo=dt.UTC)


def test_missing_and_odd_values_do_not_fail():
    ds = make_xray(patient_id="", sex="X", body_part="")
    del ds.SeriesDate, ds.StudyDate, ds.ViewPosition
    ds.PatientBirthDate = "not a date"
    exam, patient = extract(ds, regions=DEFAULT_REGIONS)
    assert patient is None and exam.series_datetime is None and exam.projection == ""
    ds.PatientID = "123"
    _, patient = extract(ds, regions=DEFAULT_REGIONS)
    assert patient.birth_date is None and patient.sex == ""


@pytest.mark.parametrize("uid", [None, "", "1.2.abc", "1." + "9" * 70])
def test_bad_sop_instance_uid(uid):
    ds = make_xray()
    if uid is None:
        del ds.SOPInstanceUID
    else:
        ds.SOPInstanceUID = uid
    with pytest.raises(BadInstance, match="SOP Instance UID"):
        extract(ds, regions=DEFAULT_REGIONS)


def test_a_uid_with_leading_zeros_is_kept_as_received():
    ds = make_xray(uid="999.999.01.23.45.6789")  # a real CR's; PS3.5 forbids, DCMTK sends
    exam, _ = extract(ds, regions=DEFAULT_REGIONS)
    assert exam.uid == "999.999.01.23.45.6789"


def test_patient_orientation_is_not_a_projection():
    ds = make_xray()
    del ds.ViewPosition
    ds.PatientOrientation = ["L", "F"]
    assert extract(ds, regions=DEFAULT_REGIONS)[0].projection == ""


@pytest.mark.parametrize(("read_untagged", "texts", "region"), [
    (True, ("", ""), "unknown"),  # anonymised or untagged: read with a generic prompt
    (False, ("", ""), ""),  # [processing] untagged = ignore
    (True, ("", "Something else"), ""),  # a text that names no rule's region: ignore
    (True, ("CHEST", ""), "chest"),
])
def test_region_when_the_tags_say_nothing(read_untagged, texts, region):
    ds = make_xray(body_part=texts[0], description=texts[1])
    exam, _ = extract(ds, regions=DEFAULT_REGIONS, read_untagged=read_untagged)
    assert exam.region == region
