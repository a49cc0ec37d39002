"""Reading FHIR R4 resources into what XRayVision needs (pure: no I/O).

Report text comes from ``DiagnosticReport.presentedForm`` attachments with inline
``data``: ``text/plain`` as is, ``text/html`` reduced to text; other content types, and
attachments only by ``url``, are skipped with a note. The charset is the content type's,
else UTF-8; bytes that are not valid in it are read as windows-1250 (Central European,
common in Romanian hospital systems) with a note, so no report is lost to its encoding.
``conclusion`` follows the attachments when they do not already contain it. The
radiologist is the first ``resultsInterpreter`` display, else the first ``performer``'s;
with no display, the Practitioner referenced (:func:`practitioner_name`, resolved by the
poller).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

ACCESSION_TYPE = "ACSN"  # v2-0203 identifier type of an accession number
DICOM_UID_SYSTEM = "urn:dicom:uid"
SEX = {"male": "M", "female": "F", "other": "O"}
FALLBACK_CHARSET = "windows-1250"


@dataclass(frozen=True)
class Identifiers:
    """Accession numbers and study instance UIDs named by a report or a request."""

    accessions: frozenset[str] = frozenset()
    study_uids: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.accessions or self.study_uids)

    def __or__(self, other: Identifiers) -> Identifiers:
        return Identifiers(self.accessions | other.accessions, self.study_uids | other.study_uids)


@dataclass(frozen=True)
class FhirReport:
    fhir_id: str
    version: str  # meta.versionId, else meta.lastUpdated
    status: str  # final, amended, corrected
    text: str
    radiologist: str
    when: dt.datetime | None  # effective[x] (start), else issued
    identifiers: Identifiers
    based_on: tuple[str, ...]  # "ServiceRequest/<id>" references
    subject: str  # "Patient/<id>"
    description: str  # code text and codings: what region rules read
    notes: tuple[str, ...] = ()  # attachments skipped or decoded with a fallback
    # "Practitioner/<id>" of the interpreter when no display names them (HIS exports)
    radiologist_ref: str = ""
    # the ImagingStudy it reports on: "ImagingStudy/<id>" references, and what references
    # carry as a logical identifier (the study UID) without a resource to read
    imaging_studies: tuple[str, ...] = ()
    imaging_identifiers: Identifiers = Identifiers()


@dataclass(frozen=True)
class PatientDetails:
    fhir_id: str
    cnp: str  # the identifier in the configured system ("" when absent)
    name: str  # DICOM style FAMILY^GIVEN
    birth_date: dt.date | None
    sex: str  # M, F, O or ""


def parse_datetime(value: object) -> dt.datetime | None:
    """A FHIR date, dateTime or instant as an aware UTC datetime (dates at midnight UTC;
    a dateTime without zone is taken as UTC); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        if len(text) == 4:
            parsed = dt.datetime(int(text), 1, 1)
        elif len(text) == 7:
            parsed = dt.datetime(int(text[:4]), int(text[5:7]), 1)
        else:
            parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def parse_date(value: object) -> dt.date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _codes(concept: object) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {str(c.get("code", "")) for c in concept.get("coding") or [] if isinstance(c, dict)}


def _tokens(concepts: object) -> set[str]:
    """``system|code`` of every coding of one CodeableConcept or a list of them."""
    if isinstance(concepts, dict):
        concepts = [concepts]
    found: set[str] = set()
    for concept in concepts if isinstance(concepts, list) else []:
        if not isinstance(concept, dict):
            continue
        for c in concept.get("coding") or []:
            if isinstance(c, dict) and c.get("code"):
                found.add(f"{c.get('system') or ''}|{c['code']}")
    return found


def token_matches(token: str, found: set[str]) -> bool:
    """Whether a search token (``system|code``, ``|code`` or ``code``) names one of the
    ``system|code`` pairs ``found``, as a FHIR server's token search does."""
    if "|" not in token:
        return any(f.split("|", 1)[1] == token for f in found)
    return token in found


# The identifier system of the resources we write to the HIS (our AI reads, as a
# preliminary DiagnosticReport and an Observation: docs/results.md); value: the read's key.
AI_READ_SYSTEM = "urn:xrayvision:ai-read"


def is_ours(resource: dict) -> bool:
    """Whether a resource is one of our AI reads (never a radiologist's report)."""
    return any(isinstance(i, dict) and i.get("system") == AI_READ_SYSTEM
               for i in resource.get("identifier") or [])


def is_imaging(resource: dict, categories: tuple[str, ...], codes: tuple[str, ...]) -> bool:
    """Whether a DiagnosticReport is one the searches ask for: a category among
    ``categories`` and a code among ``codes`` (each list empty: any). Checked again on
    what a server returns, as a server may ignore a search parameter it does not know."""
    category = _tokens(resource.get("category"))
    code = _tokens(resource.get("code"))
    return ((not categories or any(token_matches(t, category) for t in categories))
            and (not codes or any(token_matches(t, code) for t in codes)))


# Words that say a report is about a radiograph (Romanian and English), for matching by
# date: a report naming neither a region nor this is not taken for an X-ray's.
_IMAGING_WORDS = re.compile(
    r"\b(rx|dx|cr|x-?ray\w*|radiogra\w*|radiolog\w*|r[oö]ntgen\w*|imagistic\w*)\b",
    re.IGNORECASE)


def names_imaging(*texts: str) -> bool:
    """Whether any of ``texts`` names a radiograph (pure)."""
    return any(_IMAGING_WORDS.search(t or "") for t in texts)


def identifiers_of(resource: dict, accession_system: str = "") -> Identifiers:
    """Accession numbers (identifier type ACSN, or the given system) and study instance
    UIDs (system ``urn:dicom:uid``, value ``urn:oid:<uid>``)."""
    accessions: set[str] = set()
    uids: set[str] = set()
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        value = str(ident["value"]).strip()
        system = str(ident.get("system") or "")
        if system == DICOM_UID_SYSTEM:
            uids.add(value.removeprefix("urn:oid:"))
        elif ACCESSION_TYPE in _codes(ident.get("type")) or (
            accession_system and system == accession_system
        ):
            accessions.add(value)
    return Identifiers(frozenset(accessions), frozenset(uids))


class _TextExtractor(HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table",
              "ul", "ol", "section", "article", "header", "footer", "pre", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML fragment: tags dropped, blocks on their own lines, entities
    decoded, runs of blank space collapsed."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _content_type(value: str) -> tuple[str, str]:
    """(mime type, charset) of a content type; charset "" when not given."""
    mime, _, rest = (value or "").partition(";")
    charset = ""
    for param in rest.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset":
            charset = val.strip().strip('"').lower()
    return mime.strip().lower(), charset


def decode_text(data: bytes, charset: str) -> tuple[str, str]:
    """(text, note): ``data`` in ``charset`` (UTF-8 when empty), else windows-1250 with
    a note saying so. A byte-order mark is dropped."""
    name = charset or "utf-8"
    try:
        return data.decode(name).removeprefix("\ufeff"), ""
    except (UnicodeDecodeError, LookupError):
        return (data.decode(FALLBACK_CHARSET, errors="replace"),
                f"not valid {name}; read as {FALLBACK_CHARSET}")


def attachment_text(attachment: dict) -> tuple[str, str]:
    """(text, note) of one presentedForm attachment; text "" when skipped (note says why)."""
    mime, charset = _content_type(str(attachment.get("contentType") or ""))
    label = mime or "no content type"
    if "data" not in attachment:
        return "", f"{label} attachment without inline data skipped"
    if mime not in ("text/plain", "text/html", ""):
        return "", f"{label} attachment skipped"
    try:
        raw = base64.b64decode(str(attachment["data"]), validate=True)
    except (binascii.Error, ValueError):
        return "", f"{label} attachment with invalid base64 skipped"
    text, note = decode_text(raw, charset)
    if mime == "text/html":
        text = html_to_text(text)
    return text.strip(), note


def _display(refs: Any) -> str:
    for ref in refs or []:
        if isinstance(ref, dict) and str(ref.get("display") or "").strip():
            return str(ref["display"]).strip()
    return ""


def report_of(resource: dict, accession_system: str = "") -> FhirReport:
    """A DiagnosticReport resource read into a :class:`FhirReport`."""
    texts: list[str] = []
    notes: list[str] = []
    for attachment in resource.get("presentedForm") or []:
        if not isinstance(attachment, dict):
            continue
        text, note = attachment_text(attachment)
        if text:
            texts.append(text)
        if note:
            notes.append(note)
    body = "\n\n".join(texts)
    conclusion = str(resource.get("conclusion") or "").strip()
    if conclusion and conclusion not in body:
        body = f"{body}\n\n{conclusion}" if body else conclusion
    period = resource.get("effectivePeriod") or {}
    when = (parse_datetime(resource.get("effectiveDateTime"))
            or parse_datetime(period.get("start") if isinstance(period, dict) else None)
            or parse_datetime(resource.get("issued")))
    code = resource.get("code") or {}
    description = " ".join(
        [str(code.get("text") or "")]
        + [str(c.get("display") or "") for c in code.get("coding") or [] if isinstance(c, dict)]
    ).strip()
    meta = resource.get("meta") or {}
    return FhirReport(
        fhir_id=str(resource.get("id") or ""),
        version=str(meta.get("versionId") or meta.get("lastUpdated") or ""),
        status=str(resource.get("status") or ""),
        text=body,
        radiologist=_display(resource.get("resultsInterpreter")) or _display(
            resource.get("performer")),
        when=when,
        identifiers=identifiers_of(resource, accession_system),
        based_on=tuple(str(r["reference"]) for r in resource.get("basedOn") or []
                       if isinstance(r, dict) and str(r.get("reference", "")).startswith(
                           "ServiceRequest/")),
        subject=str((resource.get("subject") or {}).get("reference") or ""),
        description=description,
        notes=tuple(notes),
        radiologist_ref=_practitioner_ref(resource.get("resultsInterpreter"))
        or _practitioner_ref(resource.get("performer")),
        imaging_studies=tuple(
            str(r["reference"]) for r in resource.get("imagingStudy") or []
            if isinstance(r, dict) and str(r.get("reference", "")).startswith("ImagingStudy/")),
        imaging_identifiers=identifiers_of({"identifier": [
            r["identifier"] for r in resource.get("imagingStudy") or []
            if isinstance(r, dict) and isinstance(r.get("identifier"), dict)]}),
    )


def _practitioner_ref(refs: Any) -> str:
    for ref in refs or []:
        if isinstance(ref, dict) and str(ref.get("reference") or "").startswith(
                "Practitioner/"):
            return str(ref["reference"])
    return ""


def practitioner_name(resource: dict) -> str:
    """A Practitioner's name as a report shows it: ``HumanName.text``, else prefix,
    given names and family name ("" when it has none)."""
    for name in resource.get("name") or []:
        if not isinstance(name, dict):
            continue
        if str(name.get("text") or "").strip():
            return str(name["text"]).strip()
        parts = [*(str(p) for p in name.get("prefix") or []),
                 *(str(g) for g in name.get("given") or []), str(name.get("family") or "")]
        joined = " ".join(p.strip() for p in parts if p and p.strip())
        if joined:
            return joined
    return ""


# FHIR request-priority codes, lowest first, as queue priorities (config.PRIORITIES).
REQUEST_PRIORITIES = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}


def order_priority(requests: list[dict], accession: str) -> int | None:
    """The priority of the ServiceRequest among ``requests`` that carries ``accession``
    (the order the exam was made for); None when no request carries it or it states no
    priority (FHIR: absent means routine, but then the sender's AE title decides)."""
    if not accession:
        return None
    for request in requests:
        if request.get("resourceType") != "ServiceRequest":
            continue
        if accession in identifiers_of(request).accessions:
            return REQUEST_PRIORITIES.get(str(request.get("priority") or ""))
    return None


def patient_ids(resource: dict, identifier_system: str = "") -> frozenset[str]:
    """The values of a Patient's identifiers in ``identifier_system``; with no system,
    of every identifier (a hospital record number beside the CNP: either may be ours)."""
    return frozenset(
        str(ident["value"]).strip() for ident in resource.get("identifier") or []
        if isinstance(ident, dict) and ident.get("value")
        and (not identifier_system or ident.get("system") == identifier_system))


def patient_of(resource: dict, identifier_system: str = "") -> PatientDetails:
    """A Patient resource: the identifier in ``identifier_system`` (the first one when no
    system is configured), name, birth date and sex."""
    cnp = ""
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        if not identifier_system or ident.get("system") == identifier_system:
            cnp = str(ident["value"]).strip()
            break
    name = ""
    for entry in resource.get("name") or []:
        if isinstance(entry, dict):
            given = " ".join(str(g) for g in entry.get("given") or [])
            name = "^".join(p for p in (str(entry.get("family") or ""), given) if p)
            if name:
                break
    return PatientDetails(
        fhir_id=str(resource.get("id") or ""),
        cnp=cnp,
        name=name,
        birth_date=parse_date(resource.get("birthDate")),
        sex=SEX.get(str(resource.get("gender") or ""), ""),
    )
