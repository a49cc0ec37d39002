import pytest

from xrayvision.ai.parse import Check, parse_check, parse_report


@pytest.mark.parametrize("text,findings,impression", [
    ("FINDINGS:\nClear lungs.\n\nIMPRESSION:\nNormal chest.", "Clear lungs.", "Normal chest."),
    ("**Findings:** Clear lungs.\n**Impression:** Normal.", "Clear lungs.", "Normal."),
    ("## IMPRESSION\nFracture.\n\n## FINDINGS\nDisplaced radius fracture.",
     "Displaced radius fracture.", "Fracture."),
    ("Sure, here is the report.\nfindings - Effusion left.\nimpression - Effusion.",
     "Effusion left.", "Effusion."),
    ("FINDINGS: Cardiomegaly.", "Cardiomegaly.", ""),
    ("Impression: Pneumothorax right.", "", "Pneumothorax right."),
    ("The lungs are clear.\n\nNo acute abnormality.", "The lungs are clear.",
     "No acute abnormality."),
    ("Just one line of text", "Just one line of text", ""),
    ("", "", ""),
])
def test_parse_report(text, findings, impression):
    report = parse_report(text)
    assert (report.findings, report.impression) == (findings, impression)


def test_report_text_round_trip():
    report = parse_report("FINDINGS:\nA\n\nIMPRESSION:\nB")
    assert parse_report(report.text) == report


@pytest.mark.parametrize("text,expected", [
    ('{"positive": 1, "severity": 7, "confidence": 90, "summary": "fracture"}',
     Check(1, 7, 90, "fracture")),
    ('Answer:\n```json\n{"positive": 0, "severity": 0, "confidence": 95, "summary": "normal"}\n'
     '```\nHope this helps', Check(0, 0, 95, "normal")),
    ('The result is {"Severity": "8/10", "Positive": true, "confidence": "70%"} ok',
     Check(1, 8, 70, "")),
    ('{"positive": 5, "severity": 42, "confidence": 300, "summary": 3}', Check(1, 10, 100, "")),
    ('{"positive": -1, "severity": -1, "confidence": -1}', Check(-1, -1, -1, "")),
    ('{"positive": "maybe", "severity": null}', Check(-1, -1, -1, "")),
    ("no json at all", Check()),
    ('{"unrelated": 1} then {"severity": 3}', Check(-1, 3, -1, "")),
    ('{broken json', Check()),
    ("[1, 2, 3]", Check()),
])
def test_parse_check(text, expected):
    assert parse_check(text) == expected
