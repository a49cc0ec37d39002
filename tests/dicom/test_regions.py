import pytest

from xrayvision.config import DEFAULT_REGIONS
from xrayvision.dicom.regions import identify_region, normalise


def test_normalise():
    assert normalise("  Toráce^PA_Lat ") == "torace pa lat"
    assert normalise("") == ""


@pytest.mark.parametrize("texts,region", [
    (("CHEST", "", "", ""), "chest"),
    (("", "Radiografie toracică", "", ""), "chest"),
    (("", "", "Torace PA", ""), "chest"),
    (("HAND", "Torace", "", ""), "hand"),  # body part is tried first
    (("", "", "", "Genunchi stâng"), "leg"),
    (("", "Unknown", "", "Something"), ""),
    ((), ""),
])
def test_identify_region_with_default_rules(texts, region):
    assert identify_region(DEFAULT_REGIONS, texts) == region


def test_rules_order_decides_within_one_text():
    rules = {"first": ("pel",), "second": ("pelvis",)}
    assert identify_region(rules, ("PELVIS",)) == "first"
