"""Parsing model output (pure): the FINDINGS / IMPRESSION report and the CHK JSON."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_HEADING = re.compile(
    r"^[\s>#*_-]*(findings|impression|conclusion|concluzie|constatari|constatări)"
    r"[\s*_]*[:.\-]?[\s*_]*", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Report:
    findings: str
    impression: str

    @property
    def text(self) -> str:
        return f"FINDINGS:\n{self.findings}\n\nIMPRESSION:\n{self.impression}".strip()


def _clean(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().strip("`").splitlines()]
    return "\n".join(lines).strip()


def parse_report(text: str) -> Report:
    """FINDINGS and IMPRESSION from free model output: markdown, any case, reordered or
    missing sections, chatter before the first heading. Without headings, everything is
    the findings and the last paragraph the impression."""
    text = (text or "").replace("\r\n", "\n")
    sections: dict[str, list[str]] = {"findings": [], "impression": []}
    matches = list(_HEADING.finditer(text))
    if not matches:
        body = _clean(text)
        paragraphs = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
        if len(paragraphs) > 1:
            return Report("\n\n".join(paragraphs[:-1]).strip(), paragraphs[-1].strip())
        return Report(body, "")
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = match.group(1).lower()
        key = "findings" if name in ("findings", "constatari", "constatări") else "impression"
        chunk = _clean(text[match.end():end])
        if chunk:
            sections[key].append(chunk)
    return Report("\n".join(sections["findings"]), "\n".join(sections["impression"]))


@dataclass(frozen=True)
class Check:
    positive: int = -1
    severity: int = -1
    confidence: int = -1
    summary: str = ""


def _objects(text: str):
    """Candidate JSON objects in ``text``: fenced blocks first, then every {...} span."""
    yield from re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.DOTALL)
    depth, start = 0, None
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                yield text[start:i + 1]


def _int(value, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        return -1
    if isinstance(value, str):
        match = re.search(r"-?\d+(\.\d+)?", value)
        value = float(match.group()) if match else None
    if not isinstance(value, int | float) or value != value:
        return -1
    number = round(value)
    if number == -1:
        return -1
    return max(lo, min(hi, number))


def parse_check(text: str) -> Check:
    """The CHK answer: the first JSON object with any expected key, from fenced blocks or
    surrounding text; values validated and clamped (positive -1/0/1, severity -1..10,
    confidence -1..100), -1 when absent or unusable."""
    for candidate in _objects(text or ""):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        data = {str(k).lower(): v for k, v in data.items()}
        if not {"positive", "severity", "confidence", "summary"} & set(data):
            continue
        positive = _int(data.get("positive"), -1, 1)
        if isinstance(data.get("positive"), bool):
            positive = 1 if data["positive"] else 0
        summary = data.get("summary")
        return Check(
            positive=positive,
            severity=_int(data.get("severity"), 0, 10),
            confidence=_int(data.get("confidence"), 0, 100),
            summary=summary.strip()[:500] if isinstance(summary, str) else "",
        )
    return Check()
